"""pyro guest agent: the processes of one command's session, found and killed through /proc.

Every command runs in a session of its own (its pid is the session id). A process that moved
to another process group stays in the session, so the session is what a kill must cover; only
a process that started a session of its own escapes. stdlib-only, Python 3.11 compatible.
"""

from __future__ import annotations

import contextlib
import os
import signal

# A zombie has exited: it runs nothing and holds no memory, files or ports; only its table
# entry waits for its parent (PID 1, for an orphan) to reap it, which the agent cannot hurry.
_GONE = frozenset("ZX")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0].decode(), int(fields[3])


def live_members(sid: int) -> list[int]:
    """The processes of session `sid` that have not exited (zombies have)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []  # no /proc: nothing to go on but the group kill already sent
    found = []
    for entry in entries:
        stat = _stat(int(entry)) if entry.isdigit() else None
        if stat is not None and stat[1] == sid and stat[0] not in _GONE:
            found.append(int(entry))
    return found


def kill_member(pid: int, sid: int) -> None:
    """SIGKILL `pid` if it still belongs to session `sid`; a reused pid is never hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        pidfd = None  # a kernel before 5.3: the pid could be reused between check and kill
    try:
        # The pidfd pins the process first; if that process is still in the session now,
        # it is the one to kill (had it gone since, the signal finds nobody).
        if (stat := _stat(pid)) is None or stat[1] != sid:
            return
        with contextlib.suppress(ProcessLookupError):
            if pidfd is None:
                os.kill(pid, signal.SIGKILL)
            else:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def kill_survivors(sid: int) -> list[int]:
    """SIGKILL whatever of session `sid` still lives; returns those pids."""
    survivors = live_members(sid)
    for pid in survivors:
        kill_member(pid, sid)
    return survivors
