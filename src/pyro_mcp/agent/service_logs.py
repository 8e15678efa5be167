"""pyro guest agent, service logs: one file per stream, rotated at a size cap, read from the end.

A log keeps at most two generations (``NAME.log`` and ``NAME.log.1``) of LOG_FILE_BYTES each:
a chatty service costs bounded memory in the guest's tmpfs. A read returns the last lines asked
for (or everything kept), at most max_bytes of them, and says when that is not the whole story.
stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from pyro_mcp.protocol.redaction import Redactor

LOG_FILE_BYTES = 2 * 1024 * 1024
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
log = logging.getLogger("pyro-agent")


class Log:
    """One stream's log file, written by the service's watcher and read by logs requests."""

    def __init__(
        self, path: str, limit: int = LOG_FILE_BYTES, redactor: Redactor | None = None
    ) -> None:
        self.path, self.limit = path, limit
        # Secrets are redacted before anything is written: the files never hold one.
        self.redactor = redactor if redactor is not None and redactor.active else None
        self._lock = threading.Lock()
        self._size = 0
        self._dropped = 0  # bytes in generations rotated away
        self._fd = os.open(path, _FLAGS, 0o600)
        self._failed = False

    def write(self, data: bytes) -> None:
        """Append `data`, rotating first if it would pass the cap; a full tmpfs drops it."""
        with self._lock:
            if self._fd < 0:
                return
            if self.redactor is not None:
                data = self.redactor.feed(data)
            self._append(data)

    def _append(self, data: bytes) -> None:
        if data:
            try:
                if self._size and self._size + len(data) > self.limit:
                    self._rotate()
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
                self._size += len(data)
            except OSError as exc:
                if not self._failed:  # once per log: a full disk would repeat it per chunk
                    log.warning("service log %s: %s; dropping output", self.path, exc)
                self._failed = True

    def _rotate(self) -> None:
        old = self.path + ".1"
        with contextlib.suppress(FileNotFoundError):
            self._dropped += os.stat(old).st_size
        os.replace(self.path, old)
        os.close(self._fd)
        self._fd = os.open(self.path, _FLAGS, 0o600)
        self._size = 0

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0 and self.redactor is not None:
                self._append(self.redactor.flush())
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def tail(self, lines: int | None, max_bytes: int) -> tuple[bytes, bool]:
        """The last `lines` lines (None: all kept), at most max_bytes; and whether that is
        less than was asked for (cut by max_bytes, or older output rotated away)."""
        with self._lock:
            data, whole = read_end((self.path + ".1", self.path), max_bytes + 1)
            lost = self._dropped > 0
        return cut_tail(data, whole, lost, lines, max_bytes)


def read_end(paths: tuple[str, ...], want: int) -> tuple[bytes, bool]:
    """The last `want` bytes of the files `paths` (oldest first) read as one stream, and
    whether that is all of them."""
    chunks: list[bytes] = []
    need = want
    for path in reversed(paths):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            size = os.fstat(fd).st_size
            take = min(size, need)
            chunks.append(os.pread(fd, take, size - take))
        finally:
            os.close(fd)
        need -= take
        if need <= 0:
            return b"".join(reversed(chunks)), False
    return b"".join(reversed(chunks)), True


def line_start(data: bytes, lines: int) -> int | None:
    """Where the last `lines` lines of `data` begin; None if `data` does not show that."""
    if lines == 0:
        return len(data)
    pos = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return None
    return pos + 1


def cut_tail(
    data: bytes, whole: bool, lost: bool, lines: int | None, max_bytes: int
) -> tuple[bytes, bool]:
    """What a logs request shows of `data`, the end of a log (`whole`: all that is kept;
    `lost`: older output was rotated away), and whether it is cut."""
    if lines is not None and (start := line_start(data, lines)) is not None:
        shown = data[start:]
        return shown[len(shown) - max_bytes :] if len(shown) > max_bytes else shown, (
            len(shown) > max_bytes
        )
    cut = len(data) > max_bytes
    shown = data[len(data) - max_bytes :] if cut else data
    return shown, cut or not whole or lost
