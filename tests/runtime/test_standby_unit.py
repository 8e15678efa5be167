"""The standby pool's bookkeeping on hand-made store rows: claim, wanted, idle time, the switch.

A row's supervisor counts as alive when its (pid, start time) is a live process: these tests
name this very test process, or a child that has exited, so nothing is ever booted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.host.process import ProcessRef
from pyro_mcp.runtime import standby
from pyro_mcp.runtime.standby import StandbyPool
from pyro_mcp.state.store import StateStore

MODE = "qemu-tcg"
KIND = {
    "environment": "debian:12",
    "vcpu_count": 1,
    "mem_mib": 1024,
    "disk_mib": 0,
    "network_enabled": 0,
}


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


@pytest.fixture(scope="module")
def dead() -> ProcessRef:
    """A process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    ref = ProcessRef.of(proc.pid)
    proc.wait()
    assert ref is not None and not ref.alive()
    return ref


_serial = [0]


def add_row(
    store: StateStore,
    *,
    state: str = "standby",
    supervisor: ProcessRef | None = None,
    mode: str = MODE,
    expires_in: float = 600,
    created_at: float | None = None,
    **kind: Any,
) -> str:
    _serial[0] += 1
    vm_id = f"vm{_serial[0]:010d}"
    sup = supervisor or ProcessRef.me()
    now = time.time()
    store.insert_vm(
        {
            **KIND,
            **kind,
            "vm_id": vm_id,
            "environment_version": "1.0.0",
            "ttl_seconds": 600,
            "created_at": now if created_at is None else created_at,
            "expires_at": now + expires_in,
            "state": state,
            "execution_mode": mode,
            "vm_dir": str(store.vm_dir(vm_id)),
            "supervisor_pid": sup.pid,
            "supervisor_start": sup.start,
        }
    )
    return vm_id


def wanting() -> dict[str, Any]:
    """The row of a VM being started (what claim and wanted compare with)."""
    return {**KIND, "vm_id": "wanting", "environment_version": "1.0.0"}


def state_of(store: StateStore, vm_id: str) -> str | None:
    row = store.get_vm(vm_id)
    return None if row is None else row["state"]


# --- claim ---------------------------------------------------------------------------------


def test_claim_from_an_empty_pool_is_none(store: StateStore) -> None:
    assert StandbyPool(store).claim(wanting(), MODE) is None


def test_claim_takes_the_oldest_ready_standby_and_marks_it_claimed(store: StateStore) -> None:
    now = time.time()
    newer = add_row(store, created_at=now - 1)
    older = add_row(store, created_at=now - 10)
    claimed = StandbyPool(store).claim(wanting(), MODE)
    assert claimed is not None and claimed["vm_id"] == older
    assert (state_of(store, older), state_of(store, newer)) == ("claimed", "standby")
    again = StandbyPool(store).claim(wanting(), MODE)
    assert again is not None and again["vm_id"] == newer
    assert StandbyPool(store).claim(wanting(), MODE) is None


@pytest.mark.parametrize(
    "other",
    [
        {"environment": "debian:12-base"},
        {"vcpu_count": 2},
        {"mem_mib": 2048},
        {"disk_mib": 512},
        {"network_enabled": 1},
        {"mode": "firecracker-kvm"},
        {"state": "standby-booting"},
        {"state": "claimed"},
        {"state": "started"},
        {"expires_in": 3},  # ends before it could be used
        {"expires_in": -1},
    ],
    ids=lambda other: "-".join(f"{k}={v}" for k, v in other.items()),
)
def test_claim_passes_over_standbys_of_another_kind_or_state(
    store: StateStore, other: dict[str, Any]
) -> None:
    vm_id = add_row(store, **other)
    before = store.get_vm(vm_id)
    assert StandbyPool(store).claim(wanting(), MODE) is None
    assert store.get_vm(vm_id) == before  # left exactly as it was


def test_claim_passes_over_a_standby_whose_supervisor_is_gone(
    store: StateStore, dead: ProcessRef
) -> None:
    gone = add_row(store, supervisor=dead, created_at=time.time() - 10)
    live = add_row(store)
    claimed = StandbyPool(store).claim(wanting(), MODE)
    assert claimed is not None and claimed["vm_id"] == live
    assert state_of(store, gone) == "standby"


def test_claim_returns_the_row_as_it_was_before_the_claim(store: StateStore) -> None:
    vm_id = add_row(store)
    claimed = StandbyPool(store).claim(wanting(), MODE)
    assert claimed is not None
    assert claimed == {**store.get_vm(vm_id), "state": "standby"}  # type: ignore[dict-item]


CLAIMER = """
import json, sys, time
from pathlib import Path
from pyro_mcp.runtime.standby import StandbyPool
from pyro_mcp.state.store import StateStore

root, go = Path(sys.argv[1]), Path(sys.argv[2])
pool = StandbyPool(StateStore(root))
row = json.loads(sys.argv[3])
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.001)
got = []
while (claimed := pool.claim(row, sys.argv[4])) is not None:
    got.append(claimed["vm_id"])
print(json.dumps(got))
"""


def test_two_processes_claiming_at_once_never_get_the_same_vm(
    store: StateStore, tmp_path: Path
) -> None:
    ids = {add_row(store) for _ in range(40)}
    go = tmp_path / "go"
    argv = [sys.executable, "-c", CLAIMER, str(store.root), str(go), json.dumps(wanting()), MODE]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    claimed = [vm_id for got in results for vm_id in got]
    assert len(claimed) == len(set(claimed)), "a standby VM was claimed twice"
    assert set(claimed) == ids
    assert {state_of(store, vm_id) for vm_id in ids} == {"claimed"}


# --- wanted --------------------------------------------------------------------------------


def test_a_standby_is_wanted_when_none_of_its_kind_is_ready_or_booting(store: StateStore) -> None:
    pool = StandbyPool(store)
    assert pool.wanted(wanting(), MODE)
    add_row(store, state="claimed")  # being handed over: no longer in the pool
    add_row(store, state="started")
    add_row(store, mem_mib=2048)
    add_row(store, mode="firecracker-kvm")
    assert pool.wanted(wanting(), MODE)


@pytest.mark.parametrize("state", ["standby", "standby-booting"])
def test_a_live_standby_of_the_kind_makes_another_unwanted(store: StateStore, state: str) -> None:
    add_row(store, state=state)
    assert not StandbyPool(store).wanted(wanting(), MODE)


def test_a_dead_standby_does_not_count(store: StateStore, dead: ProcessRef) -> None:
    add_row(store, supervisor=dead)
    add_row(store, state="standby-booting", supervisor=dead)
    assert StandbyPool(store).wanted(wanting(), MODE)


# --- records, idle time, the switch ---------------------------------------------------------


def test_a_new_record_is_a_booting_standby_that_ends_when_idle(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(standby.IDLE_ENV, "42")
    template = {**wanting(), "environment_version": "9.9.9"}
    before = time.time()
    record = StandbyPool(store).new_record(template, MODE)
    row = store.get_vm(record["vm_id"])
    assert row is not None
    assert row["state"] == "standby-booting" and row["execution_mode"] == MODE
    assert {k: row[k] for k in KIND} == KIND
    assert row["environment_version"] == "9.9.9"
    assert row["ttl_seconds"] == 42
    assert before + 42 <= row["expires_at"] <= time.time() + 42
    assert row["vm_dir"] == str(store.vm_dir(record["vm_id"]))
    assert record["vm_id"] != template["vm_id"]


def test_standby_rows_and_forget_dead(store: StateStore, dead: ProcessRef) -> None:
    live = {add_row(store, state=s) for s in ("standby", "standby-booting", "claimed")}
    old = time.time() - 60
    gone = add_row(store, supervisor=dead, created_at=old)
    # A row this young may still be waiting for its supervisor's pid: never taken for dead.
    fresh = add_row(store, state="standby-booting", supervisor=dead)
    started = add_row(store, state="started", supervisor=dead, created_at=old)
    pool = StandbyPool(store)
    assert {row["vm_id"] for row in pool.standby_rows()} == live | {gone, fresh}
    pool.forget_dead()
    assert {row["vm_id"] for row in pool.standby_rows()} == live | {fresh}
    assert store.get_vm(started) is not None  # not a standby: none of the pool's business


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, standby.DEFAULT_IDLE_S),
        ("10", 10),
        ("3600", 3600),
        (" 30 ", 30),
        ("9", 10),  # a floor: a standby must live long enough to be claimed
        ("0", 10),
        ("-5", 10),
        ("", standby.DEFAULT_IDLE_S),  # unreadable values fall back to the default
        ("ten", standby.DEFAULT_IDLE_S),
        ("1.5", standby.DEFAULT_IDLE_S),
        ("1e3", standby.DEFAULT_IDLE_S),
    ],
)
def test_idle_seconds_parsing(
    monkeypatch: pytest.MonkeyPatch, value: str | None, seconds: int
) -> None:
    if value is None:
        monkeypatch.delenv(standby.IDLE_ENV, raising=False)
    else:
        monkeypatch.setenv(standby.IDLE_ENV, value)
    assert standby.idle_seconds() == seconds


@pytest.mark.parametrize(("value", "on"), [(None, True), ("1", True), ("yes", True), ("0", False)])
def test_only_zero_turns_the_pool_off(
    monkeypatch: pytest.MonkeyPatch, value: str | None, on: bool
) -> None:
    if value is None:
        monkeypatch.delenv(standby.STANDBY_ENV, raising=False)
    else:
        monkeypatch.setenv(standby.STANDBY_ENV, value)
    assert standby.enabled() is on


def test_the_test_isolation_turns_the_pool_off() -> None:
    assert not standby.enabled()
