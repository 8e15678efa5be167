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
from typing import Any, NamedTuple

import pytest

from framework.waiting import WAIT, wait_until
from pyro_mcp.environments import initramfs
from pyro_mcp.protocol import frames
from pyro_mcp.protocol.frames import Frame, FrameReader, encode_frame

__all__ = [
    "WAIT",
    "Raw",
    "RunningAgent",
    "short_workdir",
    "start_agent",
    "stop_agent",
    "wait_until",
]


class Proc(NamedTuple):
    state: str  # Z for a zombie: exited, not yet reaped
    ppid: int
    pgrp: int
    session: int


def process_table() -> dict[int, Proc]:
    """pid -> what /proc/pid/stat says, for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = Proc(fields[0], *map(int, fields[1:4]))
    return table


def descendants(pid: int) -> list[int]:
    table = process_table()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, proc in table.items() if proc.ppid == parent]
        found += children
        frontier += children
    return found


def live_group(pgid: int) -> list[int]:
    return [p for p, proc in process_table().items() if proc.pgrp == pgid and proc.state != "Z"]


def session_members(sid: int) -> dict[int, Proc]:
    """Every process of session `sid`, zombies included."""
    return {p: proc for p, proc in process_table().items() if proc.session == sid}


def live_session(sid: int) -> list[int]:
    return [p for p, proc in session_members(sid).items() if proc.state != "Z"]


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


class Raw:
    """A raw protocol speaker: frames in, frames out, nothing checked for the test."""

    def __init__(self, path: str | socket.socket) -> None:
        if isinstance(path, str):
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(path)
        else:
            self.sock = path
        self.sock.settimeout(WAIT)
        self.reader = FrameReader(self.sock)

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        self.sock.sendall(encode_frame(header, body))

    def recv(self) -> Frame | None:
        return self.reader.read_frame()

    def request(self, rid: int, op: str, params: dict[str, Any]) -> None:
        self.send(frames.req_header(rid, op, params))

    def until_result(self, rid: int) -> tuple[dict[str, bytes], dict[str, Any]]:
        output = {"stdout": b"", "stderr": b""}
        while (frame := self.recv()) is not None:
            if frame.id == rid and frame.type == "out":
                output[frame.header["stream"]] += frame.body
            elif frame.id == rid and frame.type == "res":
                return output, frame.header
        pytest.fail("connection ended before the result")

    def call(self, rid: int, op: str, params: dict[str, Any]) -> dict[str, Any]:
        self.request(rid, op, params)
        return self.until_result(rid)[1]

    def hello(self) -> dict[str, Any]:
        answer = self.call(1000, "hello", {"protocol": frames.PROTOCOL_VERSION})
        assert answer["ok"], answer
        result: dict[str, Any] = answer["result"]
        return result

    def close(self) -> None:
        self.sock.close()
