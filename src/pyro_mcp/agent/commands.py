"""pyro guest agent, exec: run one command, stream or collect its output, kill its group.

A command runs in its own session (process group); a timeout or a cancel kills the whole
group, so background children die too. stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyro_mcp.protocol import frames, ops

if TYPE_CHECKING:  # only for annotations: server.py imports this module
    from pyro_mcp.agent.server import Call

Params = dict[str, Any]

_READ_SIZE = 64 * 1024
_SEND_CHUNK = 256 * 1024
# Background jobs may hold the pipes open after the command exits; wait only briefly for them.
_DRAIN_GRACE = 0.2
_KILL_GRACE = 5.0


def exec_op(call: Call, params: Params) -> Params:
    """The exec operation: validate, check the working directory, run."""
    spec = ops.parse_exec(params)
    if not os.path.isdir(spec.cwd):
        message = f"working directory {spec.cwd} does not exist in the guest"
        raise frames.OpError(frames.ERR_NOT_FOUND, message)
    return run_exec(spec, call)


class _Capture:
    """One output pipe: keeps (or streams) its first `limit` bytes, discards the rest."""

    def __init__(self, name: str, fd: int, limit: int, sink: Callable[[str, bytes], None] | None):
        self.name, self.fd, self.limit, self.sink = name, fd, limit, sink
        self.data = bytearray()
        self.kept = 0
        self.truncated = self.eof = False

    def read(self) -> None:
        try:
            chunk = os.read(self.fd, _READ_SIZE)
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            return
        keep = chunk[: max(0, self.limit - self.kept)]
        self.truncated = self.truncated or len(keep) < len(chunk)
        self.kept += len(keep)
        if keep and self.sink is not None:
            self.sink(self.name, keep)
        elif keep:
            self.data += keep


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _poke(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, b"x")


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class _Supervisor:
    """Pumps a child's output until it exits; kills its process group on timeout or cancel."""

    def __init__(self, proc: subprocess.Popen[bytes], caps: list[_Capture], call: Call):
        self.proc, self.caps, self.call = proc, caps, call
        self.timed_out = self.cancelled = False
        self.exited_at: float | None = None
        self.give_up: float | None = None  # set once killed: how long to wait for the exit

    def run(self, timeout: float) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        pidfd = _open_pidfd(self.proc.pid)
        sel = selectors.DefaultSelector()
        sel.register(wake_r, selectors.EVENT_READ, "wake")
        for cap in self.caps:
            sel.register(cap.fd, selectors.EVENT_READ, cap)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ, "exit")
        self.call.on_cancel(lambda: _poke(wake_w))
        try:
            self._loop(sel, time.monotonic() + timeout, pidfd, wake_r)
        finally:
            # Unhook before closing: a late cancel must not write to a recycled fd.
            self.call.on_cancel(None)
            sel.close()
            for fd in (wake_r, wake_w, pidfd):
                if fd is not None:
                    os.close(fd)

    def _kill(self, now: float) -> None:
        _kill_group(self.proc.pid)
        self.give_up = now + _KILL_GRACE

    def _next_wakeup(self, now: float, deadline: float) -> float | None:
        """When to look again, or None when supervision is over."""
        if self.exited_at is not None:
            done = all(cap.eof for cap in self.caps) or now >= self.exited_at + _DRAIN_GRACE
            return None if done else self.exited_at + _DRAIN_GRACE
        if self.give_up is not None:
            return None if now >= self.give_up else self.give_up
        if now >= deadline:
            self.timed_out = True
            self._kill(now)
            return now
        return deadline

    def _loop(
        self, sel: selectors.BaseSelector, deadline: float, pidfd: int | None, wake: int
    ) -> None:
        while True:
            now = time.monotonic()
            if self.exited_at is None and self.proc.poll() is not None:
                self.exited_at = now
                if pidfd is not None:
                    sel.unregister(pidfd)
            until = self._next_wakeup(now, deadline)
            if until is None:
                return
            # Without a pidfd only polling notices the exit.
            wait = until - now if pidfd is not None else min(until - now, 0.02)
            for key, _ in sel.select(max(wait, 0.0)):
                if isinstance(key.data, _Capture):
                    key.data.read()
                    if key.data.eof:
                        sel.unregister(key.fd)
                elif key.data == "wake":
                    os.read(wake, 64)
                    if self.exited_at is None and self.give_up is None:
                        self.cancelled = True
                        self._kill(now)


def _exit_code(returncode: int | None) -> int:
    if returncode is None:
        return 128 + signal.SIGKILL
    return 128 - returncode if returncode < 0 else returncode


def _exec_result(code: int, kept: list[tuple[int, bool]], started: float, **flags: bool) -> Params:
    result: Params = {"exit_code": code}
    for stream, (count, truncated) in zip(frames.STREAMS, kept, strict=True):
        result[f"{stream}_bytes"] = count
        result[f"{stream}_truncated"] = truncated
    result["duration_ms"] = int((time.monotonic() - started) * 1000)
    return {**result, "timed_out": False, "cancelled": False, **flags}


def _spawn_failure(spec: ops.ExecSpec, exc: OSError, call: Call, started: float) -> Params:
    """Answer as a shell would: 127 for a missing program, 126 for one that cannot run."""
    name = spec.argv[0]
    if isinstance(exc, FileNotFoundError):
        code, text = frames.EXIT_NOT_FOUND, f"pyro-agent: {name}: command not found\n"
    else:
        code, text = frames.EXIT_NOT_EXECUTABLE, f"pyro-agent: {name}: {exc.strerror}\n"
    message = text.encode()[: spec.max_output]
    call.send_output("stderr", message)
    return _exec_result(code, [(0, False), (len(message), False)], started)


def run_exec(spec: ops.ExecSpec, call: Call) -> Params:
    """Run one command until it exits, times out or is cancelled; describe the outcome."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=spec.cwd,
            env=spec.env,
            start_new_session=True,
        )
    except OSError as exc:
        return _spawn_failure(spec, exc, call, started)
    assert proc.stdout is not None and proc.stderr is not None
    sink = call.send_output if spec.stream else None
    pipes = zip(frames.STREAMS, (proc.stdout, proc.stderr), strict=True)
    caps = [_Capture(name, pipe.fileno(), spec.max_output, sink) for name, pipe in pipes]
    watch = _Supervisor(proc, caps, call)
    try:
        watch.run(spec.timeout)
    finally:
        proc.stdout.close()
        proc.stderr.close()
        if proc.poll() is None:
            _kill_group(proc.pid)
    for cap in caps:
        for start in range(0, len(cap.data), _SEND_CHUNK):
            call.send_output(cap.name, bytes(cap.data[start : start + _SEND_CHUNK]))
    code = frames.EXIT_TIMEOUT if watch.timed_out else _exit_code(proc.returncode)
    kept = [(cap.kept, cap.truncated) for cap in caps]
    return _exec_result(code, kept, started, timed_out=watch.timed_out, cancelled=watch.cancelled)
