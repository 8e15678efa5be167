"""The guest agent as a real subprocess on a UNIX socket, shared by the tests in this folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from framework.waiting import WAIT, wait_until
from pyro_mcp.environments import initramfs

__all__ = ["WAIT", "RunningAgent", "short_workdir", "start_agent", "stop_agent", "wait_until"]


def process_table() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, process group) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = (fields[0], int(fields[1]), int(fields[2]))
    return table


def descendants(pid: int) -> list[int]:
    table = process_table()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, (_, ppid, _) in table.items() if ppid == parent]
        found += children
        frontier += children
    return found


def live_group(pgid: int) -> list[int]:
    return [p for p, (state, _, group) in process_table().items() if group == pgid and state != "Z"]


@dataclass
class RunningAgent:
    proc: subprocess.Popen[bytes]
    socket_path: str
    root: Path
    log: Path


def start_agent(workdir: Path, python: str | None = None) -> RunningAgent:
    """Start the agent: `-m` with this interpreter, or as a copied script like in the guest."""
    root = workdir / "root"
    for sub in ("etc", "dev", "workspace"):
        (root / sub).mkdir(parents=True)
    socket_path = str(workdir / "agent.sock")
    args = ["--unix", socket_path, "--sandbox-root", str(root)]
    if python is None:
        command = [sys.executable, "-m", "pyro_mcp.agent", *args]
    else:
        lib = workdir / "lib"
        # Exactly what the initramfs ships, run as the guest init runs it, so a module missing
        # from it (or an import of anything else of pyro_mcp) fails here.
        for name, data in initramfs.guest_files().items():
            if name.startswith(f"{initramfs.GUEST_LIB}/"):
                target = lib / name.removeprefix(f"{initramfs.GUEST_LIB}/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        command = [python, "-E", "-s", "-m", "pyro_mcp.agent", *args]
    log = workdir / "agent.log"
    with open(log, "wb") as log_file:
        cwd = workdir / "lib" if python is not None else None  # -m finds the package in its cwd
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=log_file, cwd=cwd)

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"agent exited early: {log.read_text()}")
        with socket.socket(socket.AF_UNIX) as probe:
            return probe.connect_ex(socket_path) == 0

    wait_until(ready, "the agent to listen")
    return RunningAgent(proc, socket_path, root, log)


def stop_agent(running: RunningAgent, *, forbid_traceback: bool = False) -> None:
    """Every test ends here: nothing the agent started may outlive it."""
    wait_until(lambda: not descendants(running.proc.pid), "the agent's children to end")
    running.proc.terminate()
    assert running.proc.wait(WAIT) == 0, running.log.read_text()
    if forbid_traceback:  # refusals are answers, never crashes
        assert "Traceback" not in running.log.read_text(), running.log.read_text()


@contextlib.contextmanager
def short_workdir(prefix: str) -> Iterator[Path]:
    # Short, because UNIX socket paths are limited to 108 bytes.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
