"""pyro guest agent, one run of a service: its process and session, output, readiness wait, end.

One watcher thread per run pumps the output into its logs (service_logs.py) and reaps the
leader the moment it exits, recording the exit code itself, so the host learns of an exit on
its next call with no polling meanwhile. Once the leader has exited, whatever else of its
session still runs is killed: a service ends whole. Signals go to the process group only while
the leader is unreaped, when its pid (the group's id) cannot belong to anyone else.
stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyro_mcp.agent import sessions
from pyro_mcp.agent.commands import _exit_code, _has_exited, _open_pidfd
from pyro_mcp.agent.service_logs import Log
from pyro_mcp.protocol import file_ops, frames
from pyro_mcp.protocol import service_ops as sp
from pyro_mcp.protocol.redaction import Redactor

if TYPE_CHECKING:  # only for annotations: server.py imports this module
    from pyro_mcp.agent.server import Call

Params = dict[str, Any]

_READ_SIZE = 64 * 1024
_DRAIN_READS = 64
# How long killed processes may take to be gone before we answer regardless (a process stuck
# in an uninterruptible sleep cannot act on SIGKILL), and how often to look meanwhile.
KILL_WAIT = 10.0
_SETTLE_POLL = 0.01
_NO_PIDFD_POLL = 0.05


class Service:
    """One run of a named service: its process, logs and outcome (guarded by `cond`)."""

    def __init__(
        self,
        spec: sp.StartSpec,
        directory: str,
        redactor: Callable[[], Redactor | None] = lambda: None,
    ) -> None:
        self.spec, self.directory = spec, directory
        self.run_id = os.urandom(8).hex()
        self.cond = threading.Condition()
        self.started_at = time.time()
        self.state = "running"
        self.ready_at: float | None = None
        self.ended_at: float | None = None
        self.exit_code: int | None = None
        self.pid: int | None = None
        self.stop_reason: str | None = None
        self.ending: str | None = None  # why we are killing it: a stop, a timeout, a cancel
        self.ended = self._reaped = False
        self.logs = {
            name: Log(os.path.join(directory, f"{name}.log"), redactor=redactor())
            for name in frames.STREAMS
        }

    # --- running ----------------------------------------------------------------------------

    def launch(self, cwd: str) -> None:
        """Start the process in a session of its own; a command that cannot run ends the
        service at once, as a shell would (127 not found, 126 not executable)."""
        try:
            proc = subprocess.Popen(
                self.spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=self.spec.env,
                start_new_session=True,
            )
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError)
            text = "command not found" if missing else str(exc.strerror)
            self.logs["stderr"].write(f"pyro-agent: {self.spec.argv[0]}: {text}\n".encode())
            with self.cond:
                self._reaped = True
                self._end(frames.EXIT_NOT_FOUND if missing else frames.EXIT_NOT_EXECUTABLE)
            return
        with self.cond:
            self.pid = proc.pid
            if self.spec.readiness is None:
                self.ready_at = time.time()
        with open(os.path.join(self.directory, "leader"), "w", encoding="ascii") as handle:
            handle.write(f"{proc.pid}\n")
        watcher = threading.Thread(
            target=self._watch, args=(proc,), name=f"service {self.spec.name}", daemon=True
        )
        watcher.start()

    def _watch(self, proc: Any) -> None:
        """Pump the output into the logs until the leader exits; then end the rest of its
        session, take what the pipes still hold, reap it and record the outcome."""
        pipes = {proc.stdout.fileno(): self.logs["stdout"]}
        pipes[proc.stderr.fileno()] = self.logs["stderr"]
        pidfd = _open_pidfd(proc.pid)
        sel = selectors.DefaultSelector()
        for fd, sink in pipes.items():
            sel.register(fd, selectors.EVENT_READ, sink)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ, None)
        try:
            while not _has_exited(proc.pid):
                for key, _ in sel.select(None if pidfd is not None else _NO_PIDFD_POLL):
                    if key.data is not None and not _pump(key.fd, key.data):
                        sel.unregister(key.fd)
            kill_session(proc.pid)  # the leader is unreaped, so its session id is still its
            for fd, sink in pipes.items():
                _drain(fd, sink)
        finally:
            sel.close()
            if pidfd is not None:
                os.close(pidfd)
            proc.stdout.close()
            proc.stderr.close()
        with self.cond:  # reaped and recorded at once: a reader never sees one without the other
            code = proc.wait()
            self._reaped = True
            self._end(_exit_code(code))

    def _end(self, code: int) -> None:
        """Record the outcome (cond held): why it ended decides the state."""
        self.exit_code, self.ended_at, self.ended = code, time.time(), True
        if self.ending in ("readiness_timeout", "start_cancelled"):
            self.state, self.stop_reason = "failed", self.ending
        elif self.ending is not None:
            self.state, self.stop_reason = "stopped", self.ending
        elif self.ready_at is None:
            self.state, self.stop_reason = "failed", "process_exited_before_ready"
        else:
            self.state = "exited"
        for sink in self.logs.values():
            sink.close()
        self.cond.notify_all()

    def _signal(self, signum: int) -> None:
        """Signal the service's process group (cond held). Only while the leader is unreaped:
        until then its pid, the group's id, cannot belong to anyone else."""
        if self.pid is not None and not self._reaped:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signum)

    def _wait_end(self, limit: float) -> bool:
        """Wait (cond held) up to `limit` seconds for the end; True once it has come."""
        deadline = time.monotonic() + limit
        while not self.ended and (left := deadline - time.monotonic()) > 0:
            self.cond.wait(left)
        return self.ended

    def kill(self, reason: str) -> None:
        """SIGKILL the whole group for `reason`, unless a stop already runs; wait for the end."""
        with self.cond:
            if not self.ended and self.ending is None:
                self.ending = reason
                self._signal(signal.SIGKILL)
            self._wait_end(KILL_WAIT)

    def stop(self, grace: float) -> None:
        """SIGTERM to the group, SIGKILL after `grace` seconds; returns once it has ended."""
        with self.cond:
            if self.ended:
                return
            if self.ending is None or self.ending == "sigterm":
                self.ending = "sigterm"
                self._signal(signal.SIGTERM)
                if self._wait_end(grace):
                    return
            self.ending = "sigkill"
            self._signal(signal.SIGKILL)
            self._wait_end(KILL_WAIT)

    def poke(self) -> None:
        """Wake whoever waits on this service (a request was cancelled)."""
        with self.cond:
            self.cond.notify_all()

    # --- readiness --------------------------------------------------------------------------

    def await_ready(self, call: Call, check: Callable[[float], bool]) -> None:
        """Run the readiness check every interval until it passes, the service ends, the time
        runs out (killed: readiness_timeout) or the caller cancels (killed: start_cancelled)."""
        if self.spec.readiness is None:
            return
        deadline = time.monotonic() + self.spec.ready_timeout
        interval = self.spec.ready_interval_ms / 1000
        call.on_cancel(self.poke)
        try:
            reason = self._poll_ready(call, check, deadline, interval)
        finally:
            call.on_cancel(None)
        if reason is not None:
            self.kill(reason)
        with self.cond:
            if self.ending is not None:  # a stop came meanwhile: answer with its outcome
                self._wait_end(KILL_WAIT)

    def _poll_ready(
        self, call: Call, check: Callable[[float], bool], deadline: float, interval: float
    ) -> str | None:
        """None once ready (or ended by someone else); else why it must be killed."""
        while True:
            with self.cond:
                if self.ended or self.ending is not None:
                    return None
            if call.cancelled.is_set():
                return "start_cancelled"
            left = deadline - time.monotonic()
            if left <= 0:
                return "readiness_timeout"
            if check(left):
                with self.cond:
                    if not self.ended and self.ending is None:
                        self.ready_at = time.time()
                        return None
            with self.cond:
                pause = min(interval, deadline - time.monotonic())
                if pause > 0 and not self.ended and not call.cancelled.is_set():
                    self.cond.wait(pause)

    def wait_ended(self, call: Call) -> bool:
        """Block until this run ends or the request is cancelled; True if it ended."""
        call.on_cancel(self.poke)
        try:
            with self.cond:
                while not self.ended and not call.cancelled.is_set():
                    self.cond.wait()
                return self.ended
        finally:
            call.on_cancel(None)

    def record(self) -> Params:
        """The guest's view of this run (see protocol/service_ops.py)."""
        spec = self.spec
        with self.cond:
            return {
                "name": spec.name,
                "run_id": self.run_id,
                "state": self.state,
                "argv": spec.given_argv,
                "command": spec.command,
                "cwd": file_ops.logical(spec.cwd),
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "exit_code": self.exit_code,
                "pid": self.pid,
                "readiness": spec.readiness.to_json() if spec.readiness else None,
                "ready_at": self.ready_at,
                "stop_reason": self.stop_reason,
            }


def _pump(fd: int, sink: Log) -> bool:
    """Move one read of a pipe into its log; False at the end of the pipe."""
    try:
        chunk = os.read(fd, _READ_SIZE)
    except OSError:
        chunk = b""
    if chunk:
        sink.write(chunk)
    return bool(chunk)


def _drain(fd: int, sink: Log) -> None:
    """What a pipe still holds once its writers are dead (bounded: a writer outside the
    session could keep it full)."""
    os.set_blocking(fd, False)
    for _ in range(_DRAIN_READS):
        if not _pump(fd, sink):
            return


def kill_session(sid: int) -> None:
    """SIGKILL whatever of session `sid` lives, until nothing does (or KILL_WAIT passes)."""
    deadline = time.monotonic() + KILL_WAIT
    while sessions.kill_survivors(sid) and time.monotonic() < deadline:
        time.sleep(_SETTLE_POLL)
