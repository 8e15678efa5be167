"""Process identity as (pid, start time): a recycled pid never passes for the process we started."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        start = start_time(pid)
        return None if start is None else cls(pid, start)

    @classmethod
    def me(cls) -> ProcessRef:
        ref = cls.of(os.getpid())
        assert ref is not None
        return ref

    def alive(self) -> bool:
        """True while this very process runs (a zombie counts as dead)."""
        return start_time(self.pid) == self.start and _state(self.pid) not in (None, "Z", "X")

    def signal(self, signum: int = signal.SIGTERM) -> bool:
        """Signal the process if it is still the one we mean; False if it is gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True
