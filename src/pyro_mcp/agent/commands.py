"""pyro guest agent, exec: run one command, stream or collect its output, kill its session.

A command runs in its own session (and process group); a timeout or a cancel kills the whole
session, background children and other groups too, and is answered only once none of it is
left alive. stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyro_mcp.agent import sessions
from pyro_mcp.protocol import frames, ops
from pyro_mcp.protocol.redaction import Redactor

if TYPE_CHECKING:  # only for annotations: server.py imports this module
    from pyro_mcp.agent.guest_secrets import SecretStore
    from pyro_mcp.agent.server import Call

Params = dict[str, Any]
log = logging.getLogger("pyro-agent")

_READ_SIZE = 64 * 1024
_SEND_CHUNK = 256 * 1024
# Background jobs may hold the pipes open after the command exits; wait only briefly for them.
_DRAIN_GRACE = 0.2
# Reads (of _READ_SIZE) that take what a killed session left in a pipe.
_DRAIN_READS = 64
# How long killed processes may take to die before the answer goes out regardless (a process
# stuck in an uninterruptible sleep cannot act on SIGKILL), and how often to look meanwhile.
_KILL_GRACE = 5.0
_SETTLE_POLL = 0.01


def exec_op(call: Call, params: Params, store: SecretStore | None = None) -> Params:
    """The exec operation: validate, check the working directory, run. With a store, the
    call's secret_env is mapped from it and the output is redacted with its secrets."""
    spec = ops.parse_exec(params)
    if spec.secret_env:
        if store is None:
            raise ops.ParamError("this agent keeps no secrets")
        spec = dataclasses.replace(spec, env={**spec.env, **store.env_for(spec.secret_env)})
    if not os.path.isdir(spec.cwd):
        message = f"working directory {spec.cwd} does not exist in the guest"
        raise frames.OpError(frames.ERR_NOT_FOUND, message)
    return run_exec(spec, call, store)


class _Capture:
    """One output pipe: keeps (or streams) the first `limit` bytes of its redacted output,
    discards the rest. Redaction comes first, so no cut can split an occurrence in two."""

    def __init__(
        self,
        name: str,
        fd: int,
        limit: int,
        sink: Callable[[str, bytes], None] | None,
        redactor: Redactor | None = None,
    ):
        self.name, self.fd, self.limit, self.sink = name, fd, limit, sink
        # One stream each: a redactor holds the stream's undecided tail.
        self.redactor = redactor.clone() if redactor is not None and redactor.active else None
        self.data = bytearray()
        self.kept = 0
        self.truncated = self.eof = False

    def read(self) -> None:
        try:
            chunk = os.read(self.fd, _READ_SIZE)
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True  # what the redactor holds back goes out in finish()
            return
        if self.kept >= self.limit:  # all of it is discarded: no need to redact it first
            self.truncated = True
            return
        self._keep(chunk if self.redactor is None else self.redactor.feed(chunk))

    def _keep(self, chunk: bytes) -> None:
        if not chunk:
            return
        keep = chunk[: max(0, self.limit - self.kept)]
        self.truncated = self.truncated or len(keep) < len(chunk)
        self.kept += len(keep)
        if keep and self.sink is not None:
            self.sink(self.name, keep)
        elif keep:
            self.data += keep

    def drain(self) -> None:
        """Take what the pipe still holds without waiting for more (once its writers are
        dead; a writer outside the session could keep it full, hence the bound)."""
        os.set_blocking(self.fd, False)
        for _ in range(_DRAIN_READS):
            if self.eof:
                return
            self.read()

    def finish(self) -> None:
        """The pipe is done with (at its end or not): release what the redactor holds back,
        before the outcome is answered."""
        if self.redactor is not None:
            self._keep(self.redactor.flush())


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


def _has_exited(pid: int) -> bool:
    """Whether a child has exited, without reaping it: while its zombie stays, its pid (which
    is the id of its session and group) cannot be reused, so killing those ids stays safe."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


class _Supervisor:
    """Pumps a child's output until it exits; on timeout or cancel, kills its session and
    waits until nothing of it is alive. The child is left unreaped for run_exec."""

    def __init__(self, proc: subprocess.Popen[bytes], caps: list[_Capture], call: Call):
        self.proc, self.caps, self.call = proc, caps, call
        self.timed_out = self.cancelled = False
        self.exited_at: float | None = None
        self.give_up: float | None = None  # set once killed: until when to wait for the deaths

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
        if self.exited_at is not None and self.give_up is not None:
            return self._settle(now, self.give_up)
        if self.exited_at is not None:
            done = all(cap.eof for cap in self.caps) or now >= self.exited_at + _DRAIN_GRACE
            return None if done else self.exited_at + _DRAIN_GRACE
        if self.give_up is not None:
            if now < self.give_up:
                return self.give_up
            log.warning("exec: pid %d survived SIGKILL; answering anyway", self.proc.pid)
            return None
        if now >= deadline:
            self.timed_out = True
            self._kill(now)
            return now
        return deadline

    def _settle(self, now: float, give_up: float) -> float | None:
        """After a kill and the leader's exit: look again until the session has no live
        process left (killing any that is), then take what is left in the pipes."""
        survivors = sessions.kill_survivors(self.proc.pid)
        if survivors and now < give_up:
            return min(now + _SETTLE_POLL, give_up)
        if survivors:
            log.warning("exec: pids %s survived SIGKILL; answering anyway", survivors)
        for cap in self.caps:
            cap.drain()
        return None

    def _loop(
        self, sel: selectors.BaseSelector, deadline: float, pidfd: int | None, wake: int
    ) -> None:
        while True:
            now = time.monotonic()
            if self.exited_at is None and _has_exited(self.proc.pid):
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


def run_exec(spec: ops.ExecSpec, call: Call, store: SecretStore | None = None) -> Params:
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
    redactor = store.redactor() if store is not None else None
    pipes = zip(frames.STREAMS, (proc.stdout, proc.stderr), strict=True)
    caps = [_Capture(name, pipe.fileno(), spec.max_output, sink, redactor) for name, pipe in pipes]
    watch = _Supervisor(proc, caps, call)
    try:
        watch.run(spec.timeout)
    finally:
        proc.stdout.close()
        proc.stderr.close()
        if proc.poll() is None:
            _kill_group(proc.pid)
    for cap in caps:
        cap.finish()
    for cap in caps:
        for start in range(0, len(cap.data), _SEND_CHUNK):
            call.send_output(cap.name, bytes(cap.data[start : start + _SEND_CHUNK]))
    code = frames.EXIT_TIMEOUT if watch.timed_out else _exit_code(proc.returncode)
    kept = [(cap.kept, cap.truncated) for cap in caps]
    return _exec_result(code, kept, started, timed_out=watch.timed_out, cancelled=watch.cancelled)
