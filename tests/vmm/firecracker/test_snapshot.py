"""Firecracker warm start: request bodies against the fake API, the file handling, and the real
v1.12.1 binary snapshotting a synthetic guest and loading it into fresh processes.

The real-binary tests skip unless $PYRO_TEST_FIRECRACKER_WHEEL is set and /dev/kvm is usable
(see conftest). The halting ELF guest never runs an agent, but it can be paused, snapshotted
and restored to the Running state, which covers everything on the host side: the API flow, the
stored paths, the jail and the cleanup.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from framework.firecracker_harness import (
    FakeApi,
    Vmms,
    assert_vmm_dies_with,
    jailed_backend,
    make_spec,
    no_vmm_left,
    plain_backend,
    vmm_pids,
)
from pyro_mcp.errors import HostRequirementError, VmmError
from pyro_mcp.vmm.base import Snapshot, VmSpec
from pyro_mcp.vmm.firecracker import backend as fc_backend
from pyro_mcp.vmm.firecracker.api import FirecrackerApi
from pyro_mcp.vmm.firecracker.backend import FirecrackerBackend

MIB = 1 << 20


def with_fake_vmm(
    backend: FirecrackerBackend, monkeypatch: pytest.MonkeyPatch, api_path: Path
) -> list[VmSpec]:
    """Route the backend's API calls to the fake server instead of starting a process."""
    started: list[VmSpec] = []

    def start(spec: VmSpec, console_log: Path, setup: Any) -> Any:
        started.append(spec)
        setup(FirecrackerApi(api_path))
        return "proc"

    monkeypatch.setattr(backend, "start", start)
    monkeypatch.setattr(backend, "api_socket_path", lambda spec: api_path)
    return started


def fake_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, jailed: bool
) -> FirecrackerBackend:
    """A backend, jailed or not, whose VMM is the fake API server at tmp_path/api.sock."""
    backend = jailed_backend(tmp_path, monkeypatch) if jailed else plain_backend(tmp_path)
    with_fake_vmm(backend, monkeypatch, tmp_path / "api.sock")
    return backend


# --- the template -------------------------------------------------------------------------


@pytest.mark.usefixtures("fake_kvm")
@pytest.mark.parametrize("jailed", [False, True], ids=["plain", "jailer"])
def test_template_names_its_disks_portably(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jailed: bool
) -> None:
    spec = make_spec(tmp_path, rw=True)
    backend = fake_backend(tmp_path, monkeypatch, jailed=jailed)
    memory = tmp_path / "staging" / "memory.ram"

    assert backend.launch_template(spec, spec.vm_dir / "console.log", memory) == "proc"

    drives = {path: body["path_on_host"] for _, path, body in fake_api.requests if "drives" in path}
    prefix = "/" if jailed else ""
    assert drives == {"/drives/root": f"{prefix}rootfs", "/drives/rw": f"{prefix}rw"}
    assert fake_api.requests[-1] == ("PUT", "/actions", {"action_type": "InstanceStart"})
    assert backend.template_memory == {spec.vm_dir: memory}
    if not jailed:  # relative names resolve through links in the VM directory
        assert (spec.vm_dir / "rootfs").resolve() == spec.rootfs
        assert (spec.vm_dir / "rw").resolve() == spec.rw_disk


# --- saving -------------------------------------------------------------------------------


def test_save_pauses_then_writes_a_full_snapshot_to_the_destinations(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tmp_path, rw=False)
    backend = fake_backend(tmp_path, monkeypatch, jailed=False)
    memory, state = tmp_path / "staging" / "memory.ram", tmp_path / "staging" / "device.state"
    backend.template_memory[spec.vm_dir] = memory

    backend.save_snapshot(spec, state)

    create = {"snapshot_type": "Full", "snapshot_path": str(state), "mem_file_path": str(memory)}
    assert fake_api.requests == [
        ("PATCH", "/vm", {"state": "Paused"}),
        ("PUT", "/snapshot/create", create),
    ]
    assert backend.template_memory == {}


def test_save_needs_a_template(fake_api: FakeApi, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, rw=False)
    with pytest.raises(VmmError, match="not started by launch_template"):
        plain_backend(tmp_path).save_snapshot(spec, tmp_path / "state")
    assert fake_api.requests == []


def test_save_stops_when_firecracker_refuses(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_api.faults["/snapshot/create"] = (400, b'{"fault_message": "No space left"}')
    spec = make_spec(tmp_path, rw=False)
    backend = fake_backend(tmp_path, monkeypatch, jailed=False)
    backend.template_memory[spec.vm_dir] = tmp_path / "memory"
    with pytest.raises(VmmError, match="No space left"):
        backend.save_snapshot(spec, tmp_path / "state")


def test_jailed_save_writes_in_the_chroot_and_takes_the_files_out(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tmp_path, rw=False)
    backend = fake_backend(tmp_path, monkeypatch, jailed=True)
    root = backend.jail_root(spec)
    root.mkdir(parents=True)
    staging = tmp_path / "staging"
    staging.mkdir()
    memory, state = staging / "memory.ram", staging / "device.state"
    backend.template_memory[spec.vm_dir] = memory
    for name, data in (("memory", b"ram" * 1000), ("state", b"devices")):
        (root / name).write_bytes(data)  # what the jailed VMM writes, as its uid
        os.chown(root / name, backend.uid, backend.gid)

    backend.save_snapshot(spec, state)

    create = {"snapshot_type": "Full", "snapshot_path": "/state", "mem_file_path": "/memory"}
    assert fake_api.requests[1] == ("PUT", "/snapshot/create", create)
    assert (memory.read_bytes(), state.read_bytes()) == (b"ram" * 1000, b"devices")
    assert not (root / "memory").exists() and not (root / "state").exists()
    for path in (memory, state):
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (os.geteuid(), os.getegid(), 0o444)


# --- restoring ----------------------------------------------------------------------------


def snapshot_files(tmp_path: Path) -> Snapshot:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "memory").write_bytes(bytes(4096))
    (cache / "state").write_bytes(b"devices")
    for name in ("memory", "state"):
        (cache / name).chmod(0o444)  # as the snapshot cache keeps them
    return Snapshot(cache / "memory", cache / "state")


@pytest.mark.usefixtures("fake_kvm")
def test_restore_loads_and_resumes_from_the_host_paths(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tmp_path, rw=True)
    backend = plain_backend(tmp_path)
    started = with_fake_vmm(backend, monkeypatch, tmp_path / "api.sock")
    snapshot = snapshot_files(tmp_path)

    assert backend.restore(spec, spec.vm_dir / "console.log", snapshot) == "proc"

    load = {
        "snapshot_path": str(snapshot.state),
        "mem_backend": {"backend_type": "File", "backend_path": str(snapshot.memory)},
        "resume_vm": True,
    }
    assert fake_api.requests == [("PUT", "/snapshot/load", load)]  # nothing else configured
    assert started == [spec]
    assert (spec.vm_dir / "rootfs").resolve() == spec.rootfs  # where the snapshot looks
    assert (spec.vm_dir / "rw").resolve() == spec.rw_disk


@dataclass
class JailedRestore:
    """A jailed backend over the fake API, a VM with a writable disk, and a snapshot for it."""

    backend: FirecrackerBackend
    spec: VmSpec
    snapshot: Snapshot

    def run(self) -> Any:
        return self.backend.restore(self.spec, self.spec.vm_dir / "console.log", self.snapshot)


@pytest.fixture
def jailed_restore(
    fake_kvm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> JailedRestore:
    backend = fake_backend(tmp_path, monkeypatch, jailed=True)
    return JailedRestore(backend, make_spec(tmp_path, rw=True), snapshot_files(tmp_path))


def test_jailed_restore_links_the_snapshot_into_the_chroot(
    fake_api: FakeApi, jailed_restore: JailedRestore
) -> None:
    jailed_restore.run()

    spec, snapshot = jailed_restore.spec, jailed_restore.snapshot
    load = {
        "snapshot_path": "/state",
        "mem_backend": {"backend_type": "File", "backend_path": "/memory"},
        "resume_vm": True,
    }
    assert fake_api.requests == [("PUT", "/snapshot/load", load)]
    root = jailed_restore.backend.jail_root(spec)
    assert (root / "memory").samefile(snapshot.memory) and (root / "state").samefile(snapshot.state)
    assert (root / "rootfs").samefile(spec.rootfs) and (root / "rw").samefile(spec.rw_disk or "")


def test_jailed_restore_never_copies_guest_ram(
    fake_api: FakeApi, jailed_restore: JailedRestore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_link = os.link

    def link(source: Any, target: Any) -> None:
        if Path(source) == jailed_restore.snapshot.memory:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(HostRequirementError, match="different file systems"):
        jailed_restore.run()
    assert fake_api.requests == []


def test_restore_needs_kvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fc_backend, "KVM_DEVICE", tmp_path / "no-kvm")
    spec = make_spec(tmp_path, rw=False)
    with pytest.raises(HostRequirementError, match="no-kvm is missing"):
        plain_backend(tmp_path).restore(spec, spec.vm_dir / "c.log", snapshot_files(tmp_path))


# --- the real binary ------------------------------------------------------------------------


def make_snapshot(
    backend: FirecrackerBackend, vmms: Vmms, root: Path, *, rw: bool
) -> tuple[Snapshot, VmSpec]:
    """Boot a template, snapshot it as make_template does, stop it; files as the cache keeps."""
    spec = make_spec(root / "template", rw=rw)
    staging = root / "staging"
    staging.mkdir()
    snapshot = Snapshot(staging / "memory.ram", staging / "device.state")
    proc = vmms.add(
        backend.launch_template(spec, spec.vm_dir / "console.log", snapshot.memory), spec
    )
    backend.save_snapshot(spec, snapshot.state)
    assert FirecrackerApi(backend.api_socket_path(spec)).get("/")["state"] == "Paused"
    vmms.stop(proc)
    for path in (snapshot.memory, snapshot.state):
        path.chmod(0o444)  # BlobStore.add does this when the cache takes them
    return snapshot, spec


def test_real_snapshot_restores_into_fresh_processes(
    real_backend: FirecrackerBackend, vmms: Vmms, tmp_path: Path
) -> None:
    snapshot, template = make_snapshot(real_backend, vmms, tmp_path, rw=True)

    assert snapshot.memory.stat().st_size == template.mem_mib * MIB
    assert 0 < snapshot.state.stat().st_size < MIB
    for path in (snapshot.memory, snapshot.state):
        st = path.stat()
        assert (st.st_uid, st.st_nlink) == (os.geteuid(), 1)  # ours, even from the jail
    ram_digest = hashlib.sha256(snapshot.memory.read_bytes()).hexdigest()

    # Two VMs from one snapshot at once: each finds its own disks and vsock socket.
    specs = [make_spec(tmp_path / name, rw=True) for name in ("a", "b")]
    for spec in specs:
        proc = vmms.add(real_backend.restore(spec, spec.vm_dir / "console.log", snapshot), spec)
        assert proc.poll() is None  # restore returns a running VMM, not one that gave up
    for spec in specs:
        api = FirecrackerApi(real_backend.api_socket_path(spec))
        assert api.get("/")["state"] == "Running"
        drives = {d["drive_id"]: d["path_on_host"] for d in api.get("/vm/config")["drives"]}
        prefix = "/" if real_backend.jailer is not None else ""
        assert drives == {"root": f"{prefix}rootfs", "rw": f"{prefix}rw"}
        assert real_backend.agent_socket_path(spec).is_socket()  # the stored relative uds_path
        log = (spec.vm_dir / "console.log").read_text()
        assert re.search(r"'load snapshot' VMM action took \d+ us", log), log[-2000:]
        assert len(vmm_pids(spec)) == 1
    # The RAM file is mapped privately: the running copies never write to it.
    assert hashlib.sha256(snapshot.memory.read_bytes()).hexdigest() == ram_digest

    vmms.stop_all()
    for spec in [template, *specs]:
        assert not vmm_pids(spec)


def test_real_restore_of_a_corrupt_snapshot_fails_cleanly(
    real_backend: FirecrackerBackend, vmms: Vmms, tmp_path: Path
) -> None:
    snapshot, _ = make_snapshot(real_backend, vmms, tmp_path, rw=False)
    broken = tmp_path / "broken.state"
    broken.write_bytes(b"\0" * 512)
    broken.chmod(0o444)
    spec = make_spec(tmp_path / "r", rw=False)
    with pytest.raises(VmmError, match="snapshot/load"):
        real_backend.restore(spec, spec.vm_dir / "console.log", Snapshot(snapshot.memory, broken))
    no_vmm_left(spec)  # the VMM is gone: the supervisor can cold boot instead


def test_real_restore_without_the_templates_disk_fails_cleanly(
    real_backend: FirecrackerBackend, vmms: Vmms, tmp_path: Path
) -> None:
    snapshot, _ = make_snapshot(real_backend, vmms, tmp_path, rw=True)
    spec = make_spec(tmp_path / "r", rw=False)  # the snapshot needs `rw`: it is not there
    with pytest.raises(VmmError, match="snapshot/load"):
        real_backend.restore(spec, spec.vm_dir / "console.log", snapshot)
    no_vmm_left(spec)


SUPERVISOR = """
import signal, sys
from pathlib import Path, PosixPath
from pyro_mcp.vmm.base import Snapshot, VmSpec
from pyro_mcp.vmm.firecracker.backend import FirecrackerBackend
binary, jailer, jailed = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
spec, snapshot = eval(sys.argv[4]), eval(sys.argv[5])
backend = FirecrackerBackend(Path(binary), Path(jailer), use_jailer=jailed)
backend.restore(spec, spec.vm_dir / "console.log", snapshot)
print("restored", flush=True)
signal.pause()
"""


def test_real_restored_vmm_dies_with_its_supervisor(
    real_backend: FirecrackerBackend,
    real_binaries: tuple[Path, Path],
    vmms: Vmms,
    tmp_path: Path,
) -> None:
    snapshot, _ = make_snapshot(real_backend, vmms, tmp_path, rw=False)
    spec = make_spec(tmp_path / "r", rw=False)
    jailed = "1" if real_backend.jailer is not None else "0"
    args = [*map(str, real_binaries), jailed, repr(spec), repr(snapshot)]
    assert_vmm_dies_with(SUPERVISOR, args, spec, ready=b"restored\n")
