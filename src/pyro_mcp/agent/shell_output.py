"""pyro guest agent: the bounded output of one shell, addressed by offsets into all of it.

stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import collections
import itertools

# Small appends (a PTY hands over what is there, often a few bytes) collect in a tail until
# they make a chunk this long, so the ring holds a few hundred strings rather than millions.
SEAL_CHARS = 4096


class OutputRing:
    """The last `capacity` characters of a stream, each addressed by its offset in the whole
    stream. Appending and reading cost what they carry, never the size of the ring."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.end = 0  # characters ever appended: the offset the next one will have
        self._chunks: collections.deque[str] = collections.deque()
        self._sealed = 0  # characters in _chunks
        self._tail: list[str] = []
        self._tail_len = 0

    @property
    def start(self) -> int:
        """Offset of the oldest character still kept."""
        return self.end - self._sealed - self._tail_len

    def append(self, text: str) -> None:
        if not text:
            return
        self._tail.append(text)
        self._tail_len += len(text)
        self.end += len(text)
        if self._tail_len >= SEAL_CHARS:
            self._seal()
        self._trim()

    def slice(self, cursor: int, limit: int) -> tuple[int, str]:
        """At most `limit` characters from offset `cursor` (from the oldest one kept if the
        ring has dropped `cursor`): (the offset they start at, the text)."""
        begin = max(cursor, self.start)
        stop = min(self.end, begin + limit)
        pieces, offset = [], self.start
        for chunk in itertools.chain(self._chunks, self._tail):
            chunk_end = offset + len(chunk)
            if chunk_end > begin and offset < stop:
                pieces.append(chunk[max(begin - offset, 0) : stop - offset])
            if chunk_end >= stop:
                break
            offset = chunk_end
        return begin, "".join(pieces)

    def _seal(self) -> None:
        if self._tail:
            self._chunks.append("".join(self._tail))
            self._sealed += self._tail_len
            self._tail, self._tail_len = [], 0

    def _trim(self) -> None:
        excess = self._sealed + self._tail_len - self.capacity
        if excess <= 0:
            return
        if excess > self._sealed:  # only with a capacity below SEAL_CHARS (tests)
            self._seal()
        while excess >= len(self._chunks[0]):
            dropped = self._chunks.popleft()
            self._sealed -= len(dropped)
            excess -= len(dropped)
        if excess:
            self._chunks[0] = self._chunks[0][excess:]
            self._sealed -= excess
