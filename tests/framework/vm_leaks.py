"""Fixtures for tests that boot real VMs, and the leak check every one of them ends with
(tests/conftest.py offers them to every test).

`vm_pyro` is a `Pyro` on the really built debian:12 with this test's own state directory.
`leak_guard` records every supervisor the test starts (in this process through
`launch.spawn_supervisor`; a test that runs the CLI in a subprocess adds the supervisor it
reads from the state store) and the VMM children it sees under them. On teardown it deletes
the workspaces and VMs that are left, then proves that nothing leaked: every recorded
supervisor and VMM is dead (a zombie is dead), no QEMU runs with its working directory in
this test's state directory, no other process holds a file there open, and the state's `vms/` and
`workspaces/` directories are empty. A leak fails the test, after the leaked processes it
recorded are killed.

Processes are only ever identified by (pid, start time) refs recorded here, or by QEMU's
comm plus a working directory inside this test's state directory; never by command line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from framework.waiting import wait_until
from pyro_mcp import paths
from pyro_mcp.host import tools
from pyro_mcp.host.process import ProcessRef
from pyro_mcp.runtime import launch
from pyro_mcp.sdk import Pyro
from pyro_mcp.state import workspaces as workspace_rows

QEMU_COMM = "qemu-system-x86"  # /proc/PID/comm of qemu-system-x86_64 (15 characters)
VMM_COMMS = (QEMU_COMM, "firecracker")
# Test-only knob (survives the isolation of PYRO_* variables): PYRO_TEST_WARM_START=0 makes
# these tests cold boot, as PYRO_WARM_START=0 does for pyro.
WARM_KNOB = "PYRO_TEST_WARM_START"
SETTLE_S = 15.0  # a killed process needs a moment to be gone; cleanup has this long


def comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """The direct children of `pid` (every thread's children)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _link(path: Path) -> str | None:
    try:
        target = os.readlink(path)
    except OSError:
        return None
    return target.removesuffix(" (deleted)")


def _inside(target: str | None, root: str) -> bool:
    return target is not None and (target == root or target.startswith(root + os.sep))


def pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


@dataclass
class LeakGuard:
    """What one test started, and the proof that it is all gone."""

    state_dir: Path
    supervisors: dict[int, ProcessRef] = field(default_factory=dict)
    vmms: dict[int, ProcessRef] = field(default_factory=dict)

    wait_until = staticmethod(wait_until)

    @property
    def root(self) -> str:
        return os.path.realpath(self.state_dir)

    # --- recording ------------------------------------------------------------------------

    def add_supervisor(self, ref: ProcessRef) -> None:
        self.supervisors[ref.pid] = ref
        self.scan()

    def add_supervisor_of(self, row: dict[str, Any]) -> ProcessRef:
        """Record the supervisor named by a state-store row; returns it."""
        assert row["supervisor_pid"], f"the row has no supervisor: {row}"
        ref = ProcessRef(int(row["supervisor_pid"]), int(row["supervisor_start"]))
        self.add_supervisor(ref)
        return ref

    def scan(self) -> None:
        """Record VMM children of live recorded supervisors, and QEMUs working in our state."""
        for sup in list(self.supervisors.values()):
            if not sup.alive():
                continue
            for pid in children(sup.pid):
                if comm(pid) in VMM_COMMS and (ref := ProcessRef.of(pid)) is not None:
                    self.vmms.setdefault(pid, ref)
        for pid, _ in self.qemus_in_state():
            if (ref := ProcessRef.of(pid)) is not None:
                self.vmms.setdefault(pid, ref)

    def vmm_of(self, supervisor: ProcessRef) -> ProcessRef:
        """The VMM child of a live supervisor (recorded as well)."""
        self.supervisors.setdefault(supervisor.pid, supervisor)
        found: list[ProcessRef] = []

        def look() -> bool:
            for pid in children(supervisor.pid):
                if comm(pid) in VMM_COMMS and (ref := ProcessRef.of(pid)) is not None:
                    found.append(ref)
            return bool(found)

        wait_until(look, f"the VMM child of supervisor {supervisor.pid}", SETTLE_S)
        self.vmms.setdefault(found[0].pid, found[0])
        return found[0]

    # --- looking --------------------------------------------------------------------------

    def qemus_in_state(self) -> list[tuple[int, str]]:
        """(pid, cwd) of every live QEMU whose working directory is in our state directory."""
        found = []
        for pid in pids():
            if comm(pid) != QEMU_COMM:
                continue
            cwd = _link(Path(f"/proc/{pid}/cwd"))
            ref = ProcessRef.of(pid)
            if _inside(cwd, self.root) and ref is not None and ref.alive():
                found.append((pid, str(cwd)))
        return found

    def holders(self) -> list[str]:
        """Other live processes with an open file or working directory in our state dir."""
        me = os.getpid()
        found = []
        for pid in pids():
            if pid in (1, me):
                continue
            ref = ProcessRef.of(pid)
            if ref is None or not ref.alive():
                continue
            links = [Path(f"/proc/{pid}/cwd")]
            with contextlib.suppress(OSError):
                links += list(Path(f"/proc/{pid}/fd").iterdir())
            hits = [t for link in links if _inside(t := _link(link), self.root)]
            if hits:
                found.append(f"pid {pid} ({comm(pid)}) holds {sorted(set(map(str, hits)))}")
        return found

    def own_vmms(self) -> list[int]:
        """Live VMM processes below this test process (a boot probe's QEMU, for one)."""
        found, frontier = [], [os.getpid()]
        while frontier:
            for pid in children(frontier.pop()):
                frontier.append(pid)
                ref = ProcessRef.of(pid)
                if comm(pid) in VMM_COMMS and ref is not None and ref.alive():
                    found.append(pid)
        return found

    def files(self) -> list[str]:
        """Whatever is left in the VM and workspace directories."""
        found = []
        for top in ("vms", "workspaces"):
            base = self.state_dir / top
            if base.exists():
                found += sorted(f"{top}/{p.relative_to(base)}" for p in base.rglob("*"))
        return found

    def leaks(self) -> list[str]:
        problems = []
        for kind, refs in (("supervisor", self.supervisors), ("VMM", self.vmms)):
            problems += [f"{kind} {ref.pid} still alive" for ref in refs.values() if ref.alive()]
        problems += [f"QEMU {pid} still runs in {cwd}" for pid, cwd in self.qemus_in_state()]
        problems += [f"VMM {pid} ({comm(pid)}) still runs below us" for pid in self.own_vmms()]
        problems += self.holders()
        problems += [f"file left behind: {name}" for name in self.files()]
        return problems

    def settle(self, limit: float = SETTLE_S) -> list[str]:
        """The leaks still present once `limit` seconds have passed (or none, earlier)."""
        deadline = time.monotonic() + limit
        while (problems := self.leaks()) and time.monotonic() < deadline:
            launch.reap_children()
            time.sleep(0.05)
        return problems

    def kill_recorded(self) -> None:
        for pid in self.own_vmms():
            if (ref := ProcessRef.of(pid)) is not None:
                self.vmms.setdefault(pid, ref)
        for ref in [*self.vmms.values(), *self.supervisors.values()]:
            ref.signal(signal.SIGKILL)  # does nothing unless it is still that very process
        launch.reap_children()


@pytest.fixture
def leak_guard(isolated_pyro_dirs: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[LeakGuard]:
    guard = LeakGuard(paths.state_dir())
    spawn, wait_ready = launch.spawn_supervisor, launch.wait_ready

    def recording_spawn(config: Any) -> tuple[ProcessRef, int]:
        ref, ready_fd = spawn(config)
        guard.add_supervisor(ref)
        return ref, ready_fd

    def recording_wait_ready(read_fd: int, supervisor: ProcessRef, timeout: float) -> Any:
        try:
            return wait_ready(read_fd, supervisor, timeout)
        finally:
            guard.scan()  # the VMM runs by now (unless the boot failed)

    if (warm := os.environ.get(WARM_KNOB)) is not None:
        monkeypatch.setenv("PYRO_WARM_START", warm)
    monkeypatch.setattr(launch, "spawn_supervisor", recording_spawn)
    monkeypatch.setattr(launch, "wait_ready", recording_wait_ready)
    yield guard

    guard.scan()
    cleanup_errors = []
    pyro = Pyro(state_dir=guard.state_dir)
    if pyro.vms.store.path.exists():
        for ws in workspace_rows.list_workspaces(pyro.vms.store):
            try:
                pyro.workspaces.delete(ws["workspace_id"])
            except Exception as exc:
                cleanup_errors.append(f"delete_workspace({ws['workspace_id']}) failed: {exc!r}")
        for row in pyro.vms.store.list_vms():
            try:
                pyro.vms.delete_vm(row["vm_id"], reason="test_teardown")
            except Exception as exc:
                cleanup_errors.append(f"delete_vm({row['vm_id']}) failed: {exc!r}")
    problems = guard.settle()
    if problems:
        guard.kill_recorded()
    assert not cleanup_errors + problems, "the test leaked:\n" + "\n".join(
        cleanup_errors + problems
    )


@pytest.fixture
def vm_pyro(built_debian12: Any, leak_guard: LeakGuard) -> Pyro:
    """A Pyro on the built debian:12, state in this test's own directory, leaks checked."""
    if tools.QEMU.path() is None and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip(f"no VMM can run here: {tools.QEMU.install_hint}")
    return Pyro(cache_dir=built_debian12.cache_dir)
