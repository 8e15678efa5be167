"""Start a VM's supervisor, wait until its guest answers, talk to it, and stop it."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.errors import GuestError, PyroTimeoutError, VmmError
from pyro_mcp.host.process import ProcessRef
from pyro_mcp.supervisor.config import CONFIG_FILE, LOG, SOCKET, SupervisorConfig

STOP_GRACE_S = 10.0

# Supervisors this process started; polled so that finished ones never linger as zombies.
_children: list[subprocess.Popen[bytes]] = []


def reap_children() -> None:
    _children[:] = [proc for proc in _children if proc.poll() is None]


def spawn_supervisor(config: SupervisorConfig) -> tuple[ProcessRef, int]:
    """Start the supervisor in its own session; returns it and the read end of its ready pipe."""
    vm_dir = config.spec.vm_dir
    (vm_dir / CONFIG_FILE).write_text(config.to_json())
    read_fd, write_fd = os.pipe()
    with (vm_dir / LOG).open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyro_mcp.supervisor", str(vm_dir), "--ready-fd", str(write_fd)],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # a Ctrl-C at the terminal is ours to handle, not its
        )
    os.close(write_fd)
    ref = ProcessRef.of(proc.pid) or ProcessRef(proc.pid, 0)
    reap_children()
    _children.append(proc)
    return ref, read_fd


def wait_ready(read_fd: int, supervisor: ProcessRef, timeout: float) -> dict[str, Any]:
    """The supervisor's ready report; raises with its reason when the boot failed."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                supervisor.signal(signal.SIGTERM)
                raise PyroTimeoutError(f"the VM did not become ready within {timeout:.0f} s")
            ready, _, _ = select.select([read_fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(read_fd)
    try:
        report: dict[str, Any] = json.loads(data.decode())
    except ValueError:
        raise VmmError(
            "the VM supervisor died before reporting", hint="see `pyro doctor`"
        ) from None
    if not report.get("ok"):
        raise VmmError(str(report.get("error")), hint="`pyro doctor` shows what this host can run")
    return report


def connect(vm_dir: Path, timeout: float = 10.0) -> GuestClient:
    """A client session with the VM's guest, through its supervisor."""
    try:
        return GuestClient.connect_unix(str(vm_dir / SOCKET), timeout=timeout)
    except (OSError, GuestError) as exc:
        raise GuestError(f"cannot reach the VM supervisor: {exc}") from exc


def stop_supervisor(vm_dir: Path, supervisor: ProcessRef | None, reason: str) -> None:
    """Ask the supervisor to end the VM, then make sure it is gone."""
    if supervisor is None or not supervisor.alive():
        return
    if not (vm_dir / SOCKET).exists():  # still booting: SIGTERM makes it abandon the boot
        supervisor.signal(signal.SIGTERM)
    else:
        try:
            with connect(vm_dir, timeout=2.0) as client:
                client.request("vm.shutdown", {"reason": reason}, timeout=5.0)
        except Exception:  # an unresponsive supervisor still gets a signal
            supervisor.signal(signal.SIGTERM)
    if not _wait_exit(supervisor, STOP_GRACE_S):
        supervisor.signal(signal.SIGKILL)
        _wait_exit(supervisor, STOP_GRACE_S)
    reap_children()


def _wait_exit(process: ProcessRef, timeout: float) -> bool:
    """Wait until `process` has exited (a zombie counts); False on timeout."""
    try:
        fd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return True
    try:
        deadline = time.monotonic() + timeout
        while process.alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([fd], [], [], min(left, 0.05))
            reap_children()
        return True
    finally:
        os.close(fd)
