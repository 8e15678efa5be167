"""pyro guest agent: one interactive shell on a pseudo-terminal (shells.py keeps them all).

Its process leads a session of its own with the PTY as its controlling terminal, so job
control works and a signal reaches the foreground job as a terminal's keys would. A pump thread
per shell moves the PTY's output into an OutputRing (decoded as it arrives) and notices the
exit through a pidfd; the exited leader stays unreaped until close, so the id it lends its
session cannot be reused while close may still kill by it.

A read copies only the window it returns. A read that waits for quiet sleeps on the shell's
condition until the moment the quiet would be reached, and looks again then: no polling.
stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import logging
import os
import select
import selectors
import signal
import struct
import subprocess
import termios
import threading
import time
from typing import TYPE_CHECKING, Any

from pyro_mcp.agent import sessions
from pyro_mcp.agent.shell_output import OutputRing
from pyro_mcp.protocol import frames, ops
from pyro_mcp.protocol import shell_ops as so
from pyro_mcp.protocol.redaction import Redactor

if TYPE_CHECKING:  # only for annotations: server.py imports this module
    from pyro_mcp.agent.server import Call

Params = dict[str, Any]
OpError = frames.OpError
log = logging.getLogger("pyro-agent")

_READ_SIZE = 64 * 1024
# Without a pidfd (a kernel before 5.3) only looking again notices the exit.
_EXIT_POLL = 0.05
# A program that takes none of its input for this long fails the write (the rest is dropped).
WRITE_STALL_S = 10.0
# On close: how long the hung-up shell and its jobs may take to end before SIGKILL, how long
# killed processes may take to die, and how often to look meanwhile.
CLOSE_GRACE_S = 2.0
_KILL_GRACE = 5.0
_SETTLE_POLL = 0.01
_JOIN = 5.0

ENV = {**ops.DEFAULT_EXEC_ENV, "TERM": "xterm-256color", "PS1": "pyro$ "}
# The shell opens the terminal itself once it leads its new session (Popen made it): a session
# leader without a controlling terminal that opens one acquires it, and job control needs one.
_CTTY = ["/bin/sh", "-c", 'tty=$1; shift; exec "$@" <>"$tty" >&0 2>&0', "pyro-shell"]


def _shell_argv() -> list[str]:
    for folder in ENV["PATH"].split(":"):
        bash = os.path.join(folder, "bash")
        if os.access(bash, os.X_OK):
            return [bash, "--noprofile", "--norc", "-i"]
    return ["/bin/sh", "-i"]


def _exit_status(pid: int) -> int | None:
    """The exit code of child `pid` once it has exited (128+N for signal N), left unreaped."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return 128 + signal.SIGKILL  # reaped behind our back: only close reaps it
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status


def _winsize(cols: int, rows: int) -> bytes:
    return struct.pack("HHHH", rows, cols, 0, 0)


def _poke(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, b"x")


class Shell:
    """One shell: its process, the master end of its PTY, and its output."""

    def __init__(
        self,
        shell_id: str,
        cwd: str,
        cols: int,
        rows: int,
        real_cwd: str,
        env: dict[str, str] | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.shell_id, self.cwd, self.cols, self.rows = shell_id, cwd, cols, rows
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.exit_code: int | None = None
        self.cond = threading.Condition()
        self.ring = OutputRing(so.RING_CHARS)
        self.last_output = time.monotonic()
        self.closing = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        # Secrets leave the PTY's bytes before they are decoded into the ring; the redactor
        # holds back only what may begin a secret the next bytes could complete.
        self._redactor = redactor if redactor is not None and redactor.active else None
        self._io = threading.Lock()  # the master fd: writes, ioctls, closing it
        self._wake_r, self._wake_w = os.pipe()
        try:
            self._master, self.proc = _spawn(real_cwd, cols, rows, {**ENV, **(env or {})})
        except BaseException:
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self._pidfd = _open_pidfd(self.proc.pid)
        self._pump = threading.Thread(target=self._run, name=f"shell {shell_id}", daemon=True)
        self._pump.start()

    def view(self) -> Params:
        with self.cond:
            return {
                "shell_id": self.shell_id,
                "cwd": self.cwd,
                "cols": self.cols,
                "rows": self.rows,
                "state": "running" if self.exit_code is None else "stopped",
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "exit_code": self.exit_code,
            }

    # --- the pump thread ------------------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._master, selectors.EVENT_READ, "out")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self._pidfd is not None:
            sel.register(self._pidfd, selectors.EVENT_READ, "exit")
        reading, exited = True, False
        try:
            # Until the PTY has no writer left (background jobs may outlive the shell) and
            # the shell has exited, or close() wakes it.
            while reading or not exited:
                wait = None if self._pidfd is not None or exited else _EXIT_POLL
                kinds = {key.data for key, _ in sel.select(wait)}
                if "wake" in kinds:
                    return
                if "out" in kinds and not self._take():
                    sel.unregister(self._master)
                    reading = False
                if not exited and ("exit" in kinds or self._pidfd is None):
                    exited = self._note_exit()
                    if exited and self._pidfd is not None:
                        sel.unregister(self._pidfd)
        except Exception:
            log.exception("shell %s: the output pump failed", self.shell_id)
        finally:
            sel.close()

    def _take(self) -> bool:
        """Move what the PTY holds into the ring; False once no writer is left (EIO)."""
        try:
            data = os.read(self._master, _READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        clean = data
        if self._redactor is not None:
            clean = self._redactor.feed(data) if data else self._redactor.flush()
        text = self._decoder.decode(clean, final=not data)
        with self.cond:
            self.ring.append(text)
            if text:
                self.last_output = time.monotonic()
        return bool(data)

    def _note_exit(self) -> bool:
        code = _exit_status(self.proc.pid)
        if code is None:
            return False
        with self.cond:
            if self.exit_code is None:
                self.exit_code, self.ended_at = code, time.time()
            self.cond.notify_all()
        return True

    # --- operations -----------------------------------------------------------------------

    def read(self, spec: so.ReadSpec, call: Call) -> tuple[Params, str]:
        """The window from spec.cursor, after the wait for quiet if one is asked for."""
        with self.cond:
            if spec.cursor > self.ring.end:
                raise OpError(
                    frames.ERR_INVALID_ARGUMENT,
                    f"cursor {spec.cursor} is past the end of the output ({self.ring.end} "
                    "characters so far); read from the next_cursor of the previous read",
                )
        idle = False
        if spec.wait_for_idle_ms is not None:
            idle = self._wait_quiet(spec.wait_for_idle_ms / 1000, call)
        with self.cond:
            begin, text = self.ring.slice(spec.cursor, spec.max_chars)
            truncated = begin > spec.cursor or begin + len(text) < self.ring.end
        window = {"cursor": begin, "next_cursor": begin + len(text), "truncated": truncated}
        return {**self.view(), **window, "idle": idle}, text

    def _wait_quiet(self, idle_s: float, call: Call) -> bool:
        """Until no output came for idle_s (counted from now at the earliest); False when
        the cap, a close or a cancel ended the wait first."""
        arrived = time.monotonic()
        cap = arrived + so.IDLE_WAIT_CAP_S
        call.on_cancel(self._wake_waiters)
        try:
            with self.cond:
                while not self.closing and not call.cancelled.is_set():
                    now = time.monotonic()
                    quiet_from = max(arrived, self.last_output)
                    if now - quiet_from >= idle_s:
                        return True
                    if now >= cap:
                        return False
                    self.cond.wait(min(quiet_from + idle_s, cap) - now)
                return False
        finally:
            call.on_cancel(None)

    def _wake_waiters(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _usable(self) -> None:
        """Refuse to touch a shell that ended (the caller holds _io)."""
        with self.cond:
            if self.closing:
                raise OpError(so.ERR_SHELL_ENDED, f"shell {self.shell_id} is being closed")
            if self.exit_code is not None:
                raise OpError(
                    so.ERR_SHELL_ENDED,
                    f"shell {self.shell_id} has exited (exit code {self.exit_code})",
                )

    def write(self, data: bytes) -> None:
        """Type `data` into the terminal; fails if the program takes none of it for a while."""
        with self._io:
            self._usable()
            poller = select.poll()
            poller.register(self._master, select.POLLOUT)
            deadline = time.monotonic() + WRITE_STALL_S
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self._master, view) :]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise OpError(
                            frames.ERR_IO,
                            f"the shell took {len(data) - len(view)} of {len(data)} bytes, "
                            f"then none for {WRITE_STALL_S:g} s: its program is not reading "
                            "its input (interrupt it with signal INT)",
                        ) from None
                    poller.poll(left * 1000)
                except OSError as exc:
                    raise OpError(so.ERR_SHELL_ENDED, f"the terminal is gone: {exc}") from None

    def send_signal(self, name: str) -> None:
        """Signal the terminal's foreground process group (the shell's, at its prompt)."""
        with self._io:
            self._usable()
            try:
                group = os.tcgetpgrp(self._master)
            except OSError:
                group = 0
            # No foreground group (0) must never become killpg(0): that is the agent's own.
            if group <= 1:
                group = self.proc.pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, getattr(signal, f"SIG{name}"))

    def resize(self, cols: int, rows: int) -> None:
        """Change the window size; the kernel sends SIGWINCH to the foreground job."""
        with self._io:
            self._usable()
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, _winsize(cols, rows))
            with self.cond:
                self.cols, self.rows = cols, rows

    def close(self) -> None:
        """Hang up the terminal (SIGHUP to the shell and its foreground job), SIGKILL whatever
        of its session is left after CLOSE_GRACE_S, then reap the shell and free everything."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        _poke(self._wake_w)
        self._pump.join(_JOIN)
        with self._io:  # waits out a write in progress
            os.close(self._master)
        self._end_session()
        self._note_exit()
        try:
            self.proc.wait(_KILL_GRACE)
        except subprocess.TimeoutExpired:
            log.warning("shell %s: pid %d survived SIGKILL", self.shell_id, self.proc.pid)
        for fd in (self._pidfd, self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)

    def _end_session(self) -> None:
        sid = self.proc.pid
        if self._pidfd is not None:
            select.select([self._pidfd], [], [], CLOSE_GRACE_S)
        deadline = time.monotonic() + CLOSE_GRACE_S
        while sessions.live_members(sid) and time.monotonic() < deadline:
            time.sleep(_SETTLE_POLL)
        give_up = time.monotonic() + _KILL_GRACE
        while (survivors := sessions.kill_survivors(sid)) and time.monotonic() < give_up:
            time.sleep(_SETTLE_POLL)
        if survivors:
            log.warning("shell %s: pids %s survived SIGKILL", self.shell_id, survivors)


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _spawn(
    real_cwd: str, cols: int, rows: int, env: dict[str, str]
) -> tuple[int, subprocess.Popen[bytes]]:
    """A PTY of cols x rows and a shell leading a new session on it, in real_cwd."""
    master, slave = os.openpty()
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, _winsize(cols, rows))
        proc = subprocess.Popen(
            [*_CTTY, os.ttyname(slave), *_shell_argv()],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=real_cwd,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # the shell holds it now; the master reads EIO once nobody does
    os.set_blocking(master, False)
    return master, proc
