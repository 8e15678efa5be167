"""Firecracker warm start: request bodies against the fake API, the file handling, and the real
v1.12.1 binary snapshotting a synthetic guest and loading it into fresh processes.

The real-binary tests share the fixtures of test_firecracker_backend (they skip unless
$PYRO_TEST_FIRECRACKER_WHEEL is set and /dev/kvm is usable). The halting ELF guest never runs
an agent, but it can be paused, snapshotted and restored to the Running state, which covers
everything on the host side: the API flow, the stored paths, the jail and the cleanup.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_firecracker_backend import (  # the shared fixtures are imported to be used here
    WAIT,
    FakeApi,
    fake_api,
    fake_kvm,
    jailed_backend,
    make_spec,
    no_vmm_left,
    plain_backend,
    real_backend,
    real_binaries,
    vmm_pids,
)

from pyro_mcp.errors import HostRequirementError, VmmError
from pyro_mcp.vmm import firecracker as fc
from pyro_mcp.vmm.base import Snapshot, VmSpec
from pyro_mcp.vmm.firecracker import FirecrackerApi, FirecrackerBackend

__all__ = ["fake_api", "fake_kvm", "real_backend", "real_binaries"]  # fixtures, used by name

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


# --- the template -------------------------------------------------------------------------


@pytest.mark.usefixtures("fake_kvm")
@pytest.mark.parametrize("jailed", [False, True], ids=["plain", "jailer"])
def test_template_names_its_disks_portably(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jailed: bool
) -> None:
    spec = make_spec(tmp_path, rw=True)
    backend = jailed_backend(tmp_path, monkeypatch) if jailed else plain_backend(tmp_path)
    with_fake_vmm(backend, monkeypatch, tmp_path / "api.sock")
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


def test_portable_layout_replaces_stale_links(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, rw=False)
    (spec.vm_dir / "rootfs").symlink_to(tmp_path / "elsewhere")
    (spec.vm_dir / "rw").symlink_to(tmp_path / "old-rw")
    files = plain_backend(tmp_path).prepare(spec, portable=True)
    assert (files.rootfs, files.rw_disk) == ("rootfs", None)
    assert (spec.vm_dir / "rootfs").resolve() == spec.rootfs
    assert not (spec.vm_dir / "rw").exists() and not (spec.vm_dir / "rw").is_symlink()


def test_a_plain_launch_keeps_host_paths(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, rw=True)
    files = plain_backend(tmp_path).prepare(spec)
    assert (files.rootfs, files.rw_disk) == (str(spec.rootfs), str(spec.rw_disk))
    assert not (spec.vm_dir / "rootfs").exists()


# --- saving -------------------------------------------------------------------------------


def test_save_pauses_then_writes_a_full_snapshot_to_the_destinations(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tmp_path, rw=False)
    backend = plain_backend(tmp_path)
    with_fake_vmm(backend, monkeypatch, tmp_path / "api.sock")
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
    backend = plain_backend(tmp_path)
    with_fake_vmm(backend, monkeypatch, tmp_path / "api.sock")
    backend.template_memory[spec.vm_dir] = tmp_path / "memory"
    with pytest.raises(VmmError, match="No space left"):
        backend.save_snapshot(spec, tmp_path / "state")


class JailedSave:
    """A jailed template whose fake VMM 'writes' the snapshot files into its chroot."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.spec = make_spec(tmp_path, rw=False)
        self.backend = jailed_backend(tmp_path, monkeypatch)
        with_fake_vmm(self.backend, monkeypatch, tmp_path / "api.sock")
        self.root = self.backend.jail_root(self.spec)
        self.root.mkdir(parents=True)
        staging = tmp_path / "staging"
        staging.mkdir()
        self.memory, self.state = staging / "memory.ram", staging / "device.state"
        self.backend.template_memory[self.spec.vm_dir] = self.memory
        for name, data in (("memory", b"ram" * 1000), ("state", b"devices")):
            (self.root / name).write_bytes(data)
            os.chown(self.root / name, self.backend.uid, self.backend.gid)  # the VMM's files

    def save(self) -> None:
        self.backend.save_snapshot(self.spec, self.state)


def test_jailed_save_writes_in_the_chroot_and_takes_the_files_out(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jail = JailedSave(tmp_path, monkeypatch)
    jail.save()

    create = {"snapshot_type": "Full", "snapshot_path": "/state", "mem_file_path": "/memory"}
    assert fake_api.requests[1] == ("PUT", "/snapshot/create", create)
    assert (jail.memory.read_bytes(), jail.state.read_bytes()) == (b"ram" * 1000, b"devices")
    assert not (jail.root / "memory").exists() and not (jail.root / "state").exists()
    for path in (jail.memory, jail.state):
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (os.geteuid(), os.getegid(), 0o444)


def test_jailed_save_copies_across_file_systems(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jail = JailedSave(tmp_path, monkeypatch)

    def cross_device(source: Any, target: Any) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "replace", cross_device)
    jail.save()
    assert jail.memory.read_bytes() == b"ram" * 1000 and jail.memory.stat().st_nlink == 1
    assert not (jail.root / "memory").exists()


@pytest.mark.parametrize("cross_device", [False, True], ids=["rename", "copy"])
@pytest.mark.parametrize("planted", ["symlink", "hardlink"])
def test_jailed_save_refuses_a_file_the_jail_swapped(
    fake_api: FakeApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    planted: str,
    cross_device: bool,
) -> None:
    jail = JailedSave(tmp_path, monkeypatch)
    secret = tmp_path / "secret"
    secret.write_text("not for the cache")
    (jail.root / "memory").unlink()
    if planted == "symlink":
        (jail.root / "memory").symlink_to(secret)
    else:
        os.link(secret, jail.root / "memory")
    if cross_device:
        real_replace = os.replace

        def replace(source: Any, target: Any) -> None:
            if Path(source).name == "memory":
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace)

    with pytest.raises(VmmError, match="not a file the jailed Firecracker wrote"):
        jail.save()
    assert not jail.memory.exists() and not jail.memory.is_symlink()
    assert secret.read_text() == "not for the cache" and secret.stat().st_mode & 0o777 != 0o444


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


@pytest.mark.usefixtures("fake_kvm")
def test_jailed_restore_links_the_snapshot_into_the_chroot(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tmp_path, rw=True)
    backend = jailed_backend(tmp_path, monkeypatch)
    with_fake_vmm(backend, monkeypatch, tmp_path / "api.sock")
    snapshot = snapshot_files(tmp_path)

    backend.restore(spec, spec.vm_dir / "console.log", snapshot)

    load = {
        "snapshot_path": "/state",
        "mem_backend": {"backend_type": "File", "backend_path": "/memory"},
        "resume_vm": True,
    }
    assert fake_api.requests == [("PUT", "/snapshot/load", load)]
    root = backend.jail_root(spec)
    assert (root / "memory").samefile(snapshot.memory) and (root / "state").samefile(snapshot.state)
    assert (root / "rootfs").samefile(spec.rootfs) and (root / "rw").samefile(spec.rw_disk or "")


@pytest.mark.usefixtures("fake_kvm")
def test_jailed_restore_never_copies_guest_ram(
    fake_api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tmp_path, rw=False)
    backend = jailed_backend(tmp_path, monkeypatch)
    with_fake_vmm(backend, monkeypatch, tmp_path / "api.sock")
    snapshot = snapshot_files(tmp_path)
    real_link = os.link

    def link(source: Any, target: Any) -> None:
        if Path(source) == snapshot.memory:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(HostRequirementError, match="different file systems"):
        backend.restore(spec, spec.vm_dir / "console.log", snapshot)
    assert fake_api.requests == []


def test_restore_needs_kvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fc, "KVM_DEVICE", tmp_path / "no-kvm")
    spec = make_spec(tmp_path, rw=False)
    with pytest.raises(HostRequirementError, match="no-kvm is missing"):
        plain_backend(tmp_path).restore(spec, spec.vm_dir / "c.log", snapshot_files(tmp_path))


# --- the real binary ------------------------------------------------------------------------


class Vmms:
    """Every VMM a test started, killed and proved gone at teardown."""

    def __init__(self) -> None:
        self.items: list[tuple[subprocess.Popen[bytes], VmSpec]] = []

    def add(self, proc: subprocess.Popen[bytes], spec: VmSpec) -> subprocess.Popen[bytes]:
        self.items.append((proc, spec))
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for item_proc, spec in self.items:
            if item_proc is proc:
                proc.kill()
                proc.wait(WAIT)
                no_vmm_left(spec)

    def stop_all(self) -> None:
        for proc, _ in self.items:
            self.stop(proc)


@pytest.fixture
def vmms() -> Iterator[Vmms]:
    tracker = Vmms()
    yield tracker
    tracker.stop_all()


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
        started = time.monotonic()
        vmms.add(real_backend.restore(spec, spec.vm_dir / "console.log", snapshot), spec)
        assert time.monotonic() - started < 5.0
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
import sys, time
from pathlib import Path, PosixPath
from pyro_mcp.vmm.base import Snapshot, VmSpec
from pyro_mcp.vmm.firecracker import FirecrackerBackend
binary, jailer, jailed = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
spec, snapshot = eval(sys.argv[4]), eval(sys.argv[5])
backend = FirecrackerBackend(Path(binary), Path(jailer), use_jailer=jailed)
backend.restore(spec, spec.vm_dir / "console.log", snapshot)
print("restored", flush=True)
time.sleep(60)
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
    argv = [sys.executable, "-c", SUPERVISOR, *map(str, real_binaries), jailed]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    supervisor = subprocess.Popen(
        [*argv, repr(spec), repr(snapshot)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert supervisor.stdout is not None
        assert supervisor.stdout.readline() == b"restored\n"
        [pid] = vmm_pids(spec)
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(WAIT)
        no_vmm_left(spec)
        assert not Path(f"/proc/{pid}/exe").exists()
    finally:
        supervisor.kill()
        supervisor.wait(WAIT)
        for pid in vmm_pids(spec):  # only if the test failed: never leave one behind
            os.kill(pid, signal.SIGKILL)
