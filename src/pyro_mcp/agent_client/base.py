"""Host side of the guest protocol: the pieces client.py and files.py share.

A request in flight (Waiter), and the checks every guest answer goes through: the guest is
hostile, so anything it says is bounded, type-checked and made printable before use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import Any

from pyro_mcp.errors import GuestError, InvalidArgumentError, NotFoundError, PyroError
from pyro_mcp.protocol import frames

OutputCallback = Callable[[str, bytes], None]

_MAX_GUEST_TEXT = 500
VERSION_HINT = "the environment's agent and this pyro-mcp differ; re-pull the environment"


def guest_text(value: object) -> str:
    """Guest-supplied text made safe to show: printable and short."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value)[:_MAX_GUEST_TEXT])
    return text if len(str(value)) <= _MAX_GUEST_TEXT else text + "..."


def malformed(what: str) -> GuestError:
    return GuestError(f"guest agent sent a malformed {what}", hint="the guest may be compromised")


def error_from_guest(op: str, error: dict[str, Any]) -> PyroError:
    code, message = guest_text(error["code"]), guest_text(error["message"])
    text = f"guest {op} failed: {message}"
    if code == frames.ERR_INVALID_ARGUMENT:
        return InvalidArgumentError(text, guest_code=code)
    if code == frames.ERR_NOT_FOUND:
        return NotFoundError(text, guest_code=code)
    if code == frames.ERR_VERSION_MISMATCH:
        return GuestError(text, hint=VERSION_HINT, guest_code=code)
    return GuestError(text, guest_code=code)


class Waiter:
    """A request in flight: its output so far and, once answered, its outcome.

    Output may arrive only on `streams`, at most `max_output` bytes on each; anything else is
    a guest breaking the frames.
    """

    def __init__(
        self,
        op: str,
        parse: Callable[[Waiter, dict[str, Any]], Any],
        on_output: OutputCallback | None,
        max_output: int,
        keep: bool,
        streams: Collection[str] = frames.STREAMS,
    ) -> None:
        self.op = op
        self.parse = parse
        self.on_output = on_output
        self.max_output = max_output
        self.keep = keep
        self.output = {name: bytearray() for name in streams}
        self.received = dict.fromkeys(streams, 0)
        self.done = threading.Event()
        self.value: Any = None
        self.failure: BaseException | None = None

    def take_output(self, stream: str, data: bytes) -> BaseException | None:
        """Record a chunk; returns the callback's exception, if it raised."""
        if stream not in self.received:
            raise malformed(f"{self.op} output (nothing may arrive on {stream})")
        self.received[stream] += len(data)
        if self.received[stream] > self.max_output:
            raise malformed(f"{self.op} output (more than {self.max_output} bytes on {stream})")
        if self.keep:
            self.output[stream] += data
        if self.on_output is None or self.failure is not None:
            return None
        try:
            self.on_output(stream, data)
        except Exception as exc:
            self.failure = exc
            return exc
        return None

    def resolve(self, value: Any = None, failure: BaseException | None = None) -> None:
        if self.failure is None:
            self.value, self.failure = value, failure
        self.done.set()


def field(result: dict[str, Any], key: str, kind: type) -> Any:
    """result[key], which must be of `kind` (an int is never a bool here)."""
    value = result.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise malformed(f"result ({key} should be {kind.__name__})")
    return value


def count(result: dict[str, Any], key: str, limit: int) -> int:
    """A non-negative integer result field of at most `limit`."""
    value: int = field(result, key, int)
    if not 0 <= value <= limit:
        raise malformed(f"result ({key} = {value} is outside 0..{limit})")
    return value
