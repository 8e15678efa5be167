"""Firecracker backend: configuration against a fake API, argv, launch failures, the agent
connection through a stand-in vsock bridge, and the real binary.

The real-binary tests (see conftest) boot a synthetic guest (an ELF that halts its only vCPU),
which any KVM runs, so configuration, launch, the vsock bridge and cleanup are exercised even on
a host whose KVM cannot run a real kernel; the guest-level test skips there with the doctor's
reason.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from framework.firecracker_harness import (
    FakeApi,
    Vmms,
    assert_vmm_dies_with,
    make_spec,
    no_vmm_left,
    plain_backend,
    vmm_pids,
)
from framework.waiting import WAIT, wait_until
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.errors import GuestError, HostRequirementError, PyroTimeoutError, VmmError
from pyro_mcp.network import netns
from pyro_mcp.vmm.base import GuestNic, VmSpec
from pyro_mcp.vmm.boot_args import boot_args
from pyro_mcp.vmm.firecracker import backend as fc_backend
from pyro_mcp.vmm.firecracker.api import FirecrackerApi
from pyro_mcp.vmm.firecracker.backend import FirecrackerBackend

# --- configuration sequence ---------------------------------------------------------------


@pytest.mark.parametrize("rw", [False, True], ids=["tmpfs-upper", "rw-disk"])
def test_configure_sends_the_exact_sequence(fake_api: FakeApi, tmp_path: Path, rw: bool) -> None:
    spec = make_spec(tmp_path, rw=rw)
    backend = plain_backend(tmp_path)
    backend.configure(FirecrackerApi(tmp_path / "api.sock"), spec, backend.prepare(spec))

    extra = " pyro.rw=/dev/vdb" if rw else ""
    args = f"{boot_args('kvm')} pyro.transport=vsock pyro.hostname=fc-test{extra}"
    drive = {"is_root_device": False}
    expected: list[tuple[str, str, Any]] = [
        ("PUT", "/boot-source", {"kernel_image_path": str(spec.kernel),
                                 "initrd_path": str(spec.initramfs), "boot_args": args}),
        ("PUT", "/drives/root", {"drive_id": "root", "path_on_host": str(spec.rootfs),
                                 **drive, "is_read_only": True}),
    ]  # fmt: skip
    if rw:
        rw_drive = {"drive_id": "rw", "path_on_host": str(spec.rw_disk), "is_read_only": False}
        expected.append(("PUT", "/drives/rw", {**rw_drive, **drive}))
    expected += [
        ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "smt": False}),
        ("PUT", "/vsock", {"guest_cid": 3, "uds_path": "vsock.sock"}),
        ("PUT", "/actions", {"action_type": "InstanceStart"}),
    ]
    assert fake_api.requests == expected
    assert "nomodule" not in args


def test_configure_gives_a_nic_its_tap_by_name_before_the_start(
    fake_api: FakeApi, tmp_path: Path
) -> None:
    nic = GuestNic("tap0", "02:50:59:00:00:02", "172.16.0.2/30", "172.16.0.1", netns_fd=9)
    spec = replace(make_spec(tmp_path, rw=False), nic=nic)
    backend = plain_backend(tmp_path)
    backend.configure(FirecrackerApi(tmp_path / "api.sock"), spec, backend.prepare(spec))
    paths = [path for _, path, _ in fake_api.requests]
    assert paths[-2:] == ["/network-interfaces/eth0", "/actions"]
    iface = {"iface_id": "eth0", "guest_mac": "02:50:59:00:00:02", "host_dev_name": "tap0"}
    assert fake_api.requests[-2][2] == iface
    assert "pyro.net=172.16.0.2/30,172.16.0.1" in fake_api.requests[0][2]["boot_args"]


def test_configure_stops_at_the_first_rejection(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.faults["/drives/root"] = (400, b'{"fault_message": "no such file"}')
    spec = make_spec(tmp_path, rw=True)
    backend = plain_backend(tmp_path)
    with pytest.raises(VmmError, match="no such file"):
        backend.configure(FirecrackerApi(tmp_path / "api.sock"), spec, backend.prepare(spec))
    assert [path for _, path, _ in fake_api.requests] == ["/boot-source", "/drives/root"]


# --- construction and argv ---------------------------------------------------------------


def test_missing_firecracker_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fc_backend, "find_firecracker", lambda: None)
    with pytest.raises(HostRequirementError) as caught:
        FirecrackerBackend()
    assert caught.value.hint is not None and "pyro runtime install firecracker" in caught.value.hint


def test_identity_and_plain_command(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, rw=False)
    backend = plain_backend(tmp_path)
    assert (backend.name, backend.accel, backend.execution_mode) == (
        "firecracker", "kvm", "firecracker-kvm",
    )  # fmt: skip
    assert backend.command(spec) == [
        str(tmp_path / "bin" / "firecracker"),
        "--api-sock",
        "api.sock",
    ]
    assert backend.api_socket_path(spec) == spec.vm_dir / "api.sock"
    assert backend.agent_socket_path(spec) == spec.vm_dir / "vsock.sock"


def test_jailer_is_the_default_only_for_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "firecracker"
    jailer = tmp_path / "jailer"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert FirecrackerBackend(binary, jailer).jailer is None
    with pytest.raises(HostRequirementError, match="needs root"):
        FirecrackerBackend(binary, jailer, use_jailer=True)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert FirecrackerBackend(binary, jailer).jailer == jailer
    assert FirecrackerBackend(binary).jailer is None  # none beside the binary
    with pytest.raises(HostRequirementError, match="jailer is not installed"):
        FirecrackerBackend(binary, use_jailer=True)


# --- launch failures and the agent connection (no real VMM) --------------------------------


@pytest.mark.usefixtures("fake_kvm")
def test_launch_reports_a_vmm_that_exits_early(tmp_path: Path) -> None:
    binary = tmp_path / "bin" / "firecracker"
    binary.parent.mkdir()
    binary.write_text('#!/bin/sh\necho "refusing: $*"\nexit 3\n')
    binary.chmod(0o755)
    spec = make_spec(tmp_path, rw=False)
    backend = FirecrackerBackend(binary, use_jailer=False)
    with pytest.raises(VmmError, match=r"exited with code 3 .*refusing: --api-sock api\.sock"):
        backend.launch(spec, spec.vm_dir / "console.log")


@pytest.mark.usefixtures("fake_kvm")
def test_launch_of_a_missing_binary_says_how_to_install(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, rw=False)
    with pytest.raises(HostRequirementError, match="cannot start"):
        plain_backend(tmp_path).launch(spec, spec.vm_dir / "console.log")


def test_launch_needs_kvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fc_backend, "KVM_DEVICE", tmp_path / "no-kvm")
    spec = make_spec(tmp_path, rw=False)
    with pytest.raises(HostRequirementError, match="no-kvm is missing"):
        plain_backend(tmp_path).launch(spec, spec.vm_dir / "console.log")


class Bridge:
    """A stand-in for the vsock UDS: per connection, stay silent (None) or answer."""

    def __init__(self, path: Path, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.lines: list[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen()
        self.listener.settimeout(0.05)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        held = []
        while self.answers and not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            held.append(conn)
            self.lines.append(conn.recv(64))
            if (answer := self.answers.pop(0)) is not None:
                conn.sendall(answer)
        self.stopped.wait(WAIT)
        for conn in [*held, self.listener]:
            conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(WAIT)


def test_connect_agent_retries_until_the_guest_answers(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, rw=False)
    backend = plain_backend(tmp_path)
    bridge = Bridge(backend.agent_socket_path(spec), [None, b"OK 1073741824\nagent"])
    sock = backend.connect_agent(spec, timeout=WAIT)
    with sock:
        assert sock.gettimeout() is None
        assert sock.recv(16) == b"agent"  # what follows the OK line belongs to the agent
    bridge.stop()
    assert bridge.lines == [b"CONNECT 52\n", b"CONNECT 52\n"]


def test_connect_agent_gives_up_on_a_silent_guest(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, rw=False)
    backend = plain_backend(tmp_path)
    path = backend.agent_socket_path(spec)
    bridge = Bridge(path, [None] * 100)
    with pytest.raises(PyroTimeoutError, match="vsock port 52") as caught:
        backend.connect_agent(spec, timeout=1.0)
    # It gave up on its own deadline, the last attempt stalled, while the bridge took more.
    assert f"through {path} within 1 s: timed out" in str(caught.value)
    bridge.stop()
    assert bridge.answers, "the bridge ran out of connections before connect_agent gave up"
    assert bridge.lines[:2] == [b"CONNECT 52\n", b"CONNECT 52\n"]  # retried, each stalled


# --- the real binary ------------------------------------------------------------------------


def test_real_firecracker_boots_a_guest_and_fails_the_agent_cleanly(
    real_backend: FirecrackerBackend, vmms: Vmms, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, rw=True)
    proc = vmms.launch(real_backend, spec)

    assert proc.poll() is None
    info = FirecrackerApi(real_backend.api_socket_path(spec)).get("/")
    assert (info["state"], info["vmm_version"]) == ("Running", "1.12.1")
    log = (spec.vm_dir / "console.log").read_text()
    assert "InstanceStart" in log and "Status code: 204 No Content" in log
    [pid] = vmm_pids(spec)
    if real_backend.jailer is None:
        assert pid == proc.pid
    else:  # jailed: the unprivileged id, in a PID namespace of its own
        uid_line = Path(f"/proc/{pid}/status").read_text().split("\nUid:")[1].split()
        assert int(uid_line[0]) == real_backend.uid
        assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")

    with pytest.raises((PyroTimeoutError, GuestError)) as caught:
        real_backend.connect_agent(spec, timeout=1.5)  # the guest has no agent: no hang
    if isinstance(caught.value, PyroTimeoutError):
        assert "vsock port 52" in str(caught.value)
    assert proc.poll() is None  # what failed was the guest's side, not the VMM

    proc.kill()
    proc.wait(WAIT)
    no_vmm_left(spec)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), f"/proc/{pid} to disappear")


def test_real_firecracker_opens_its_tap_inside_the_vm_namespace(
    real_backend: FirecrackerBackend, vmms: Vmms, tmp_path: Path
) -> None:
    with netns.throwaway_namespace() as ns:
        with netns.entered(ns):
            os.close(netns.open_tap("tap0", persist=True))
        nic = GuestNic("tap0", "02:50:59:00:00:02", "172.16.0.2/30", "172.16.0.1", netns_fd=ns)
        spec = replace(make_spec(tmp_path, rw=False), nic=nic)
        proc = vmms.launch(real_backend, spec)
        assert proc.poll() is None  # it found tap0: there is none in this test's namespace
        [pid] = vmm_pids(spec)
        with netns.entered(ns):
            assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/thread-self/ns/net")
        proc.kill()
        proc.wait(WAIT)
    no_vmm_left(spec)


def test_real_firecracker_rejects_a_non_elf_kernel(
    real_backend: FirecrackerBackend, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, rw=False, kernel=b"MZ this is not a vmlinux")
    with pytest.raises(VmmError, match="elf header") as caught:
        real_backend.launch(spec, spec.vm_dir / "console.log")
    assert "Kernel Loader" in caught.value.details["fault_message"]
    no_vmm_left(spec)  # launch killed the VMM before raising


SUPERVISOR = """
import signal, sys
from pathlib import Path, PosixPath
from pyro_mcp.network import netns
from pyro_mcp.vmm.base import GuestNic, VmSpec
from pyro_mcp.vmm.firecracker.backend import FirecrackerBackend
binary, jailer, jailed, spec = sys.argv[1], sys.argv[2], sys.argv[3] == "1", eval(sys.argv[4])
backend = FirecrackerBackend(Path(binary), Path(jailer), use_jailer=jailed)
backend.launch(spec, spec.vm_dir / "console.log")
print("launched", flush=True)
signal.pause()
"""


def test_real_vmm_dies_with_its_supervisor(
    real_backend: FirecrackerBackend, real_binaries: tuple[Path, Path], tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, rw=False)
    jailed = "1" if real_backend.jailer is not None else "0"
    args = [*map(str, real_binaries), jailed, repr(spec)]
    assert_vmm_dies_with(SUPERVISOR, args, spec, ready=b"launched\n")


# --- the real kernel ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kvm_verdict(real_binaries: tuple[Path, Path], built_debian12: Any) -> tuple[bool | None, str]:
    """The doctor's word on KVM, from a real boot probe of the built kernel (once a run).

    Only where the real binaries are: without them the tests skip before anything is built.
    """
    report = built_debian12.pyro().doctor(probe=True)
    return report["kvm"]["usable"], report["kvm"]["reason"]


@pytest.fixture
def guest_kvm(kvm_verdict: tuple[bool | None, str]) -> None:
    usable, reason = kvm_verdict
    if not usable:
        pytest.skip(f"KVM cannot run the guest on this host: {reason}")


@pytest.fixture
def no_guest_kvm(kvm_verdict: tuple[bool | None, str]) -> None:
    usable, reason = kvm_verdict
    if usable:
        pytest.skip(f"KVM runs a real guest here ({reason}); the guest-level test covers it")


@pytest.fixture
def real_spec(built_debian12: Any, tmp_path: Path) -> VmSpec:
    """A VM of the really built debian:12 kernel, initramfs and root image."""
    result = built_debian12.pull_result
    spec = make_spec(tmp_path, rw=True)
    return VmSpec(**{**spec.__dict__, "kernel": Path(result["kernel_image"]),
                     "initramfs": Path(result["initramfs_image"]),
                     "rootfs": Path(result["rootfs_image"])})  # fmt: skip


@pytest.mark.integration
@pytest.mark.usefixtures("no_guest_kvm")
def test_real_kernel_starts_but_cannot_run_where_kvm_is_unusable(
    real_backend: FirecrackerBackend, vmms: Vmms, real_spec: VmSpec
) -> None:
    proc = vmms.launch(real_backend, real_spec)  # InstanceStart accepted
    assert proc.poll() is None
    with pytest.raises((PyroTimeoutError, GuestError)):
        real_backend.connect_agent(real_spec, timeout=2.0)


@pytest.mark.integration
@pytest.mark.vm
@pytest.mark.kvm
@pytest.mark.usefixtures("guest_kvm")
def test_guest_agent_answers_under_firecracker(
    real_backend: FirecrackerBackend, vmms: Vmms, real_spec: VmSpec
) -> None:
    vmms.launch(real_backend, real_spec)
    sock = real_backend.connect_agent(real_spec, timeout=60.0)
    with GuestClient(sock) as client:
        client.hello(timeout=10.0)
        assert client.exec(["hostname"], timeout=10.0).stdout == "fc-test\n"
