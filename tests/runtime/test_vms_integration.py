"""The VM engine against real VMs (QEMU TCG on this host), through the SDK.

Every test ends with the leak check of `leak_guard` (see conftest.py): no supervisor, VMM,
socket, disk or log of its VMs is left once it is over.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pyro_mcp.errors import NotFoundError, WrongStateError
from pyro_mcp.host.process import ProcessRef
from pyro_mcp.protocol import ops
from pyro_mcp.sdk import Pyro
from pyro_mcp.state.store import StateStore

if TYPE_CHECKING:
    from framework.vm_leaks import LeakGuard

pytestmark = [pytest.mark.integration, pytest.mark.vm]

ENV = "debian:12"
KNOWN_MODES = {"qemu-tcg", "qemu-kvm", "firecracker-kvm"}
EXEC_KEYS = {
    "vm_id", "environment", "environment_version", "command", "stdout", "stderr", "exit_code",
    "duration_ms", "execution_mode", "cleanup",
}  # fmt: skip
CLEANUP_DEADLINE = 15.0


def expected_mode() -> set[str]:
    # This host's /dev/kvm is nested PVM, which cannot run a stock guest kernel: TCG.
    return {"qemu-tcg"} if Path("/sys/module/kvm_pvm").exists() else KNOWN_MODES


def check_exec_result(result: dict[str, Any], vm_id: str | None = None) -> None:
    assert set(result) >= EXEC_KEYS
    assert result["environment"] == ENV
    assert result["environment_version"]
    assert result["execution_mode"] in expected_mode()
    assert isinstance(result["duration_ms"], int) and result["duration_ms"] >= 0
    assert result["cleanup"] == {
        "vm_id": result["vm_id"],
        "deleted": True,
        "reason": "post_exec_cleanup",
    }
    if vm_id is not None:
        assert result["vm_id"] == vm_id


def supervisor_of(pyro: Pyro, guard: LeakGuard, vm_id: str) -> ProcessRef:
    row = pyro.vms.store.get_vm(vm_id)
    assert row is not None and row["state"] == "started", row
    return guard.add_supervisor_of(row)


def guest_processes(pyro: Pyro, vm_id: str) -> list[tuple[str, str]]:
    """(comm, state) of every process in the guest, read from its /proc."""
    # A process can vanish between the two reads (init reaps an orphan's zombie at any time):
    # no state means it is gone, not that it runs.
    script = (
        "for p in /proc/[0-9]*; do "
        "c=$(cat $p/comm 2>/dev/null) || continue; "
        "s=$(sed -n 's/^.*) \\(.\\).*/\\1/p' $p/stat 2>/dev/null); "
        '[ -n "$s" ] && echo "$c|$s"; done; true'
    )
    _, result, _ = pyro.vms.exec_in(vm_id, script)
    assert result.exit_code == 0, result.stderr
    return [tuple(line.rsplit("|", 1)) for line in result.stdout.splitlines()]  # type: ignore[misc]


# --- one-shot runs ---------------------------------------------------------------------------


def test_run_in_vm_passes_argv_exactly_and_runs_strings_through_the_shell(
    vm_pyro: Pyro,
) -> None:
    argv = ["sh", "-c", "printf '%s|' \"$@\"; exit 5", "x", "a b", "it's", '"q"', "", "*"]
    result = vm_pyro.run_in_vm(environment=ENV, command=argv)
    check_exec_result(result)
    assert result["stdout"] == 'a b|it\'s|"q"||*|'
    assert result["exit_code"] == 5
    assert result["stderr"] == ""
    with pytest.raises(NotFoundError):
        vm_pyro.status_vm(result["vm_id"])

    # A string is one shell command line, run by /bin/sh (that it is a login shell, -l, is
    # checked in the lifecycle test, which can plant a ~/.profile first).
    line = 'echo "$0"; echo $((6 * 7)) >&2; exit 3'
    result = vm_pyro.run_in_vm(environment=ENV, command=line)
    check_exec_result(result)
    assert result["command"] == line
    assert (result["stdout"], result["stderr"], result["exit_code"]) == ("/bin/sh\n", "42\n", 3)
    with pytest.raises(NotFoundError):
        vm_pyro.status_vm(result["vm_id"])
    assert vm_pyro.vms.store.list_vms() == []


def test_huge_output_is_capped_at_one_mib_and_flagged(vm_pyro: Pyro) -> None:
    result = vm_pyro.run_in_vm(
        environment=ENV,
        command="head -c 5000000 /dev/zero | tr '\\0' a; echo done >&2",
        timeout_seconds=120,
    )
    check_exec_result(result)
    assert result["exit_code"] == 0
    assert result["stdout"] == "a" * ops.DEFAULT_MAX_OUTPUT
    assert result["stdout_truncated"] is True
    assert (result["stderr"], result["stderr_truncated"]) == ("done\n", False)


# --- the lifecycle ---------------------------------------------------------------------------


def test_lifecycle_create_start_stop_restart_exec(vm_pyro: Pyro, leak_guard: LeakGuard) -> None:
    pyro = vm_pyro
    vm = pyro.create_vm(environment=ENV, ttl_seconds=900)
    vm_id = vm["vm_id"]
    assert vm["state"] == "created"
    assert pyro.status_vm(vm_id)["state"] == "created"

    started = pyro.start_vm(vm_id)
    assert started["state"] == "started"
    assert started["execution_mode"] in expected_mode()
    assert started["metadata"]["backend"] == started["execution_mode"].split("-")[0]
    assert started["stop_reason"] is None
    with pytest.raises(WrongStateError, match="already started"):
        pyro.start_vm(vm_id)
    status = pyro.status_vm(vm_id)
    assert {k: status[k] for k in ("state", "vm_id", "ttl_seconds")} == {
        "state": "started",
        "vm_id": vm_id,
        "ttl_seconds": 900,
    }
    net = pyro.network_info_vm(vm_id)
    assert net["vm_id"] == vm_id
    assert (net["network_enabled"], net["outbound_connectivity_expected"]) == (False, False)
    assert pyro.reap_expired() == {"deleted_vm_ids": [], "count": 0}
    assert pyro.status_vm(vm_id)["state"] == "started"

    vm_dir = Path(pyro.vms.store.vm_dir(vm_id))
    assert os.stat(vm_dir).st_mode & 0o777 == 0o700
    sock = vm_dir / "supervisor.sock"
    assert sock.is_socket() and os.stat(sock).st_mode & 0o777 == 0o600

    # Work done in the guest, with the VM kept (exec_in is the lower layer of exec_vm).
    # A string runs in a login shell (`sh -lc` reads ~/.profile); an argv runs as given.
    _, out, _ = pyro.vms.exec_in(vm_id, "echo 'export PYRO_LOGIN=yes' >> ~/.profile")
    assert out.exit_code == 0
    _, out, _ = pyro.vms.exec_in(vm_id, "echo login=$PYRO_LOGIN")
    assert (out.exit_code, out.stdout) == (0, "login=yes\n")
    _, out, _ = pyro.vms.exec_in(vm_id, ["sh", "-c", "echo login=${PYRO_LOGIN:-no}"])
    assert (out.exit_code, out.stdout) == (0, "login=no\n")

    sup = supervisor_of(pyro, leak_guard, vm_id)
    vmm = leak_guard.vmm_of(sup)
    stopped = pyro.stop_vm(vm_id)
    assert stopped["state"] == "stopped"
    assert stopped["stop_reason"] == "stopped: stop_vm"
    assert not sup.alive() and not vmm.alive()
    assert not vm_dir.exists()
    with pytest.raises(WrongStateError, match="is stopped"):
        pyro.exec_vm(vm_id, command="true")
    assert pyro.status_vm(vm_id)["state"] == "stopped"  # the refused exec kept it

    # A stopped VM starts again (a fresh boot) and exec_vm then deletes it.
    again = pyro.start_vm(vm_id)
    assert (again["state"], again["stop_reason"]) == ("started", None)
    result = pyro.exec_vm(vm_id, command=["cat", "/proc/sys/kernel/hostname"])
    check_exec_result(result, vm_id)
    assert result["stdout"] == f"pyro-{vm_id[:8]}\n"
    with pytest.raises(NotFoundError):
        pyro.status_vm(vm_id)
    assert not vm_dir.exists()

    # And an explicit delete of a started VM.
    other = pyro.create_vm(environment=ENV)["vm_id"]
    pyro.start_vm(other)
    sup = supervisor_of(pyro, leak_guard, other)
    assert pyro.delete_vm(other) == {"vm_id": other, "deleted": True, "reason": "explicit_delete"}
    assert not sup.alive()
    assert pyro.vms.store.list_vms() == []


def test_two_vms_from_one_environment_are_independent(vm_pyro: Pyro) -> None:
    pyro = vm_pyro
    ids = [pyro.create_vm(environment=ENV)["vm_id"] for _ in range(2)]
    errors: list[BaseException] = []

    def start(vm_id: str) -> None:
        try:
            pyro.start_vm(vm_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(vm_id,)) for vm_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # A file written in one is not in the other.
    _, first, _ = pyro.vms.exec_in(ids[0], "echo mine > /tmp/only-here")
    assert first.exit_code == 0
    probe = (
        "hostname; cat /proc/sys/kernel/random/boot_id /etc/machine-id; "
        "cat /tmp/only-here 2>/dev/null || echo absent"
    )
    outputs = [pyro.exec_vm(vm_id, command=probe) for vm_id in ids]
    lines = [result["stdout"].splitlines() for result in outputs]
    for vm_id, result, got in zip(ids, outputs, lines, strict=True):
        check_exec_result(result, vm_id)
        assert got[0] == f"pyro-{vm_id[:8]}"
    assert lines[0][0] != lines[1][0]  # hostname
    assert lines[0][1] != lines[1][1]  # boot_id
    assert lines[0][2] != lines[1][2]  # machine-id
    assert (lines[0][3], lines[1][3]) == ("mine", "absent")


# --- faults ----------------------------------------------------------------------------------


def test_exec_timeout_returns_124_with_partial_output_and_leaves_nothing_running(
    vm_pyro: Pyro,
) -> None:
    pyro = vm_pyro
    vm_id = pyro.create_vm(environment=ENV)["vm_id"]
    pyro.start_vm(vm_id)
    command = "echo start; sleep 100 & sleep 100"
    _, result, _ = pyro.vms.exec_in(vm_id, command, timeout_seconds=2)
    assert (result.exit_code, result.timed_out, result.stdout) == (124, True, "start\n")
    running = [(c, s) for c, s in guest_processes(pyro, vm_id) if s != "Z"]
    assert running, "the /proc listing found no process at all"
    assert "sleep" not in {c for c, _ in running}, running

    # The same through the public exec_vm: the result says so, and the VM is deleted.
    public = pyro.exec_vm(vm_id, command=command, timeout_seconds=2)
    check_exec_result(public, vm_id)
    assert (public["exit_code"], public["timed_out"], public["stdout"]) == (124, True, "start\n")
    with pytest.raises(NotFoundError):
        pyro.status_vm(vm_id)


def test_sigkill_of_the_vmm_stops_the_vm_with_the_reason(
    vm_pyro: Pyro, leak_guard: LeakGuard
) -> None:
    pyro = vm_pyro
    vm_id = pyro.create_vm(environment=ENV)["vm_id"]
    pyro.start_vm(vm_id)
    sup = supervisor_of(pyro, leak_guard, vm_id)
    vmm = leak_guard.vmm_of(sup)
    vm_dir = Path(pyro.vms.store.vm_dir(vm_id))
    assert vmm.signal(signal.SIGKILL)

    leak_guard.wait_until(
        lambda: pyro.status_vm(vm_id)["state"] == "stopped",
        "the VM to read as stopped",
        CLEANUP_DEADLINE,
    )
    status = pyro.status_vm(vm_id)
    assert "VMM" in status["stop_reason"] and "signal 9" in status["stop_reason"]
    assert status["stop_reason"].startswith("vmm_exited")
    leak_guard.wait_until(lambda: not sup.alive(), "the supervisor to end", CLEANUP_DEADLINE)
    leak_guard.wait_until(lambda: not vm_dir.exists(), "the VM's files to go", CLEANUP_DEADLINE)
    with pytest.raises(WrongStateError, match=f"VM {vm_id} is stopped") as caught:
        pyro.exec_vm(vm_id, command="true")
    assert "vmm_exited" in str(caught.value)
    assert pyro.delete_vm(vm_id)["deleted"] is True
    with pytest.raises(NotFoundError):
        pyro.status_vm(vm_id)


def test_the_supervisor_alone_ends_a_vm_at_its_ttl(vm_pyro: Pyro, leak_guard: LeakGuard) -> None:
    pyro = vm_pyro
    vm_id = pyro.create_vm(environment=ENV, ttl_seconds=60)["vm_id"]
    # The TTL floor is 60 s; move the deadline closer in the record before the start reads it.
    expires_at = time.time() + 25
    pyro.vms.store.update_vm(vm_id, expires_at=expires_at)
    pyro.start_vm(vm_id)
    sup = supervisor_of(pyro, leak_guard, vm_id)
    vmm = leak_guard.vmm_of(sup)
    vm_dir = Path(pyro.vms.store.vm_dir(vm_id))

    # From here on no pyro call: only the store's row and /proc are looked at.
    store = StateStore(pyro.vms.store.root)

    def gone() -> bool:
        return (
            store.get_vm(vm_id) is None
            and not sup.alive()
            and not vmm.alive()
            and not vm_dir.exists()
        )

    limit = max(0.0, expires_at - time.time()) + CLEANUP_DEADLINE
    leak_guard.wait_until(gone, "the supervisor to end the expired VM and delete its record", limit)
    assert time.time() >= expires_at  # not before its time
