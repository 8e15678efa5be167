"""Per-workspace file locks, shared by every pyro process on the host.

Two locks per workspace. `use` is held shared by every operation on the running VM (exec,
files, diff, ...) and exclusively by a lifecycle change (create, stop, start, reset, delete)
while it swaps the VM, so no operation ever sees half a change. `life` serialises lifecycle
changes; a lifecycle change holds it from start to end, so a free `life` lock next to a
transitional state means the process doing that change died.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from pyro_mcp.errors import ConflictError

USE = "use.lock"
LIFE = "life.lock"
_POLL_S = 0.05


@contextlib.contextmanager
def hold(directory: Path, name: str, *, exclusive: bool, timeout: float) -> Iterator[None]:
    """Hold lock `name` of the workspace in `directory`, waiting up to `timeout` seconds."""
    fd = os.open(directory / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        _acquire(fd, exclusive, timeout, directory.name)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(fd: int, exclusive: bool, timeout: float, workspace_id: str) -> None:
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ConflictError(
                    f"workspace {workspace_id} is busy: another call is changing or using it "
                    f"and did not finish within {timeout:.0f} s",
                    hint="retry when it finishes",
                ) from None
            time.sleep(_POLL_S)


def is_free(directory: Path, name: str) -> bool:
    """True when no process holds lock `name` (probed without waiting)."""
    try:
        fd = os.open(directory / name, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
