"""Reading a VM's record back: not found, not started, and a dead supervisor's VM reconciled.

The supervisors here are this test process (alive) or a child that has exited (dead): nothing
is booted, and nothing is ever signalled.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from framework.state_rows import vm_record
from pyro_mcp import paths
from pyro_mcp.errors import NotFoundError, WrongStateError
from pyro_mcp.host.process import ProcessRef
from pyro_mcp.runtime import vm_records
from pyro_mcp.sdk import Pyro
from pyro_mcp.state import network as slots
from pyro_mcp.state.store import StateStore


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


@pytest.fixture(scope="module")
def dead() -> ProcessRef:
    proc = subprocess.Popen(["true"])
    ref = ProcessRef.of(proc.pid)
    proc.wait()
    assert ref is not None and not ref.alive()
    return ref


def add_vm(store: StateStore, vm_id: str, **fields: Any) -> dict[str, Any]:
    store.insert_vm(vm_record(vm_id, vm_dir=str(store.vm_dir(vm_id)), **fields))
    row = store.get_vm(vm_id)
    assert row is not None
    return row


def started_by(ref: ProcessRef) -> dict[str, Any]:
    return {"state": "started", "supervisor_pid": ref.pid, "supervisor_start": ref.start}


def test_an_unknown_vm_is_not_found_with_where_ids_come_from(store: StateStore) -> None:
    with pytest.raises(NotFoundError, match="VM 'nope' does not exist") as caught:
        vm_records.load(store, "nope")
    assert caught.value.hint is not None and "create_vm" in caught.value.hint


def test_load_started_names_the_state_and_the_stop_reason(store: StateStore) -> None:
    add_vm(store, "made")
    add_vm(store, "halted", state="stopped", stop_reason="stopped: stop_vm")
    with pytest.raises(WrongStateError, match=r"VM made is created;") as caught:
        vm_records.load_started(store, "made")
    assert caught.value.hint is not None and "start_vm" in caught.value.hint
    with pytest.raises(WrongStateError, match=r"is stopped \(stopped: stop_vm\)"):
        vm_records.load_started(store, "halted")


def test_a_vm_whose_supervisor_lives_is_left_as_it_is(store: StateStore) -> None:
    row = add_vm(store, "live", **started_by(ProcessRef.me()))
    assert vm_records.load_started(store, "live") == row
    assert store.get_vm("live") == row


def test_a_stop_the_supervisor_recorded_itself_is_not_overwritten(
    store: StateStore, dead: ProcessRef
) -> None:
    stale = add_vm(store, "ended", **started_by(dead))
    store.update_vm("ended", state="stopped", stop_reason="vmm_exited: it crashed")
    fresh = vm_records.reconcile(store, stale)
    assert (fresh["state"], fresh["stop_reason"]) == ("stopped", "vmm_exited: it crashed")
    store.delete_vm("ended")  # the supervisor of a one-shot VM drops its row instead
    assert vm_records.reconcile(store, stale)["state"] == "stopped"


def test_a_started_vm_whose_supervisor_is_gone_reads_as_stopped_and_loses_its_files(
    dead: ProcessRef,
) -> None:
    pyro = Pyro()
    vm_id = pyro.create_vm(environment="debian:12")["vm_id"]
    vm_dir = Path(pyro.vms.store.vm_dir(vm_id))
    paths.ensure_private_dir(vm_dir)
    (vm_dir / "console.log").write_text("left behind")
    pyro.vms.store.update_vm(vm_id, **started_by(dead))
    vm = pyro.status_vm(vm_id)
    assert vm["state"] == "stopped"
    assert vm["stop_reason"].startswith("supervisor_died")
    assert not vm_dir.exists()
    row = pyro.vms.store.get_vm(vm_id)
    assert row is not None and (row["state"], row["supervisor_pid"]) == ("stopped", None)
    with pytest.raises(WrongStateError, match="supervisor_died"):
        pyro.exec_vm(vm_id, command="true")
    pyro.delete_vm(vm_id)


def test_a_networked_vm_whose_supervisor_is_gone_gives_up_its_uplink_slot(
    dead: ProcessRef,
) -> None:
    pyro = Pyro()
    vm_id = pyro.create_vm(environment="debian:12", network=True)["vm_id"]
    assert slots.held(pyro.vms.store) == {vm_id: 0}
    pyro.vms.store.update_vm(vm_id, **started_by(dead))
    assert pyro.status_vm(vm_id)["state"] == "stopped"
    assert slots.held(pyro.vms.store) == {}  # the kernel freed its namespace with it
    pyro.delete_vm(vm_id)


def test_stopping_a_networked_vm_that_never_started_frees_its_slot() -> None:
    pyro = Pyro()
    vm_id = pyro.create_vm(environment="debian:12", network=True)["vm_id"]
    pyro.stop_vm(vm_id)
    assert slots.held(pyro.vms.store) == {}
