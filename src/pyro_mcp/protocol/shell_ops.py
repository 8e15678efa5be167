"""Guest protocol, shells: the parameters and limits of the interactive PTY shell operations.

Shared by the host (which rejects a bad request before sending it) and the agent (which applies
the same rules again), so it stays stdlib-only and Python 3.11 compatible, like frames.py.

A shell's output is addressed in characters: the agent decodes the PTY's bytes as UTF-8 (an
invalid byte becomes U+FFFD) as they arrive, so a cursor is a character offset into everything
the shell ever printed, a read never splits a character, and ``next_cursor - cursor`` is the
length of the text returned. The agent keeps the last RING_CHARS characters of each shell.

Operations (params -> result; every result holds the shell's view, SHELL_VIEW_KEYS):

- ``shell.open`` {cwd, cols, rows, secret_env} -> view. secret_env {SECRET: ENV} puts installed
  secrets into the shell's environment; the output of every shell is redacted in the agent
  before it enters the ring (protocol/redaction.py), so no read returns a secret.
- ``shell.read`` {shell_id, cursor, max_chars, wait_for_idle_ms} -> view + {cursor,
  next_cursor, truncated, idle}; the text as UTF-8 ``data`` output. ``cursor`` in the result is
  where the text starts: later than the one asked for when the ring no longer holds that part.
  ``truncated`` says the text is not everything from the requested cursor to the end of the
  output so far (the ring dropped its start, or max_chars cut it). With wait_for_idle_ms the
  agent first waits until the output has been quiet that long (counted from the request's
  arrival at the latest), or IDLE_WAIT_CAP_S passed; ``idle`` says the quiet was reached.
- ``shell.write`` {shell_id, input, append_newline} -> view + {input_bytes}.
- ``shell.signal`` {shell_id, signal} -> view + {signal}; sent to the terminal's foreground
  process group, as a terminal's keys do.
- ``shell.resize`` {shell_id, cols, rows} -> view.
- ``shell.close`` {shell_id} -> view + {closed}; the shell is forgotten afterwards.
- ``shell.list`` {} -> {shells: [view]}.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pyro_mcp.protocol.file_ops import Parts, workspace_parts
from pyro_mcp.protocol.ops import ParamError, check_keys, parse_secret_env

RING_CHARS = 1024 * 1024
DEFAULT_MAX_CHARS = 65536
MAX_READ_CHARS = RING_CHARS
MAX_IDLE_MS = 10_000
# A read that waits for quiet returns after this long even if the program never goes quiet,
# so a caller always gets an answer within a tool call's usual deadline.
IDLE_WAIT_CAP_S = 30.0
DEFAULT_COLS, DEFAULT_ROWS = 120, 30
MAX_COLS = MAX_ROWS = 1000
# Shells (stopped ones too, until closed) one guest keeps; each holds up to RING_CHARS.
MAX_SHELLS = 32
# Input travels in the request header (64 KiB); this leaves room for the rest of it.
MAX_INPUT_JSON_BYTES = 60 * 1024
SIGNALS = ("HUP", "INT", "TERM", "KILL")
STATES = ("running", "stopped")
SHELL_VIEW_KEYS = (
    "shell_id", "cwd", "cols", "rows", "state", "started_at", "ended_at", "exit_code",
)  # fmt: skip
# Error codes of the shell operations, besides frames' general ones.
ERR_UNKNOWN_SHELL = "unknown_shell"
ERR_SHELL_ENDED = "shell_ended"
ERR_TOO_MANY_SHELLS = "too_many_shells"

_SHELL_ID = re.compile(r"[0-9a-f]{12}")


@dataclass(frozen=True)
class OpenSpec:
    parts: Parts
    cols: int
    rows: int
    # {SECRET: ENV}: the agent adds each installed secret's value to the shell's env.
    secret_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadSpec:
    shell_id: str
    cursor: int
    max_chars: int
    wait_for_idle_ms: int | None


@dataclass(frozen=True)
class WriteSpec:
    shell_id: str
    input: str
    append_newline: bool


def valid_shell_id(value: object) -> bool:
    """Whether `value` has the form of a shell id (12 lowercase hex digits)."""
    return isinstance(value, str) and _SHELL_ID.fullmatch(value) is not None


def _int_in(params: dict[str, Any], key: str, default: int | None, low: int, high: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParamError(f"{key} must be an integer between {low} and {high}, got {value!r:.40}")
    return value


def _shell_id(params: dict[str, Any]) -> str:
    value = params.get("shell_id")
    if not valid_shell_id(value):
        raise ParamError(f"shell_id must be 12 lowercase hex digits, got {value!r:.40}")
    return str(value)


def _size(params: dict[str, Any]) -> tuple[int, int]:
    cols = _int_in(params, "cols", DEFAULT_COLS, 1, MAX_COLS)
    return cols, _int_in(params, "rows", DEFAULT_ROWS, 1, MAX_ROWS)


def parse_open(params: dict[str, Any]) -> OpenSpec:
    """shell.open: a working directory inside /workspace, a window size, secret_env."""
    check_keys(params, {"cwd", "cols", "rows", "secret_env"})
    parts = workspace_parts(params.get("cwd", "/workspace"), "cwd")
    return OpenSpec(parts, *_size(params), secret_env=parse_secret_env(params))


def parse_read(params: dict[str, Any]) -> ReadSpec:
    check_keys(params, {"shell_id", "cursor", "max_chars", "wait_for_idle_ms"})
    idle = params.get("wait_for_idle_ms")
    if idle is not None:
        idle = _int_in(params, "wait_for_idle_ms", None, 1, MAX_IDLE_MS)
    return ReadSpec(
        _shell_id(params),
        _int_in(params, "cursor", 0, 0, 2**62),
        _int_in(params, "max_chars", DEFAULT_MAX_CHARS, 1, MAX_READ_CHARS),
        idle,
    )


def parse_write(params: dict[str, Any]) -> WriteSpec:
    check_keys(params, {"shell_id", "input", "append_newline"})
    text = params.get("input")
    if not isinstance(text, str):
        raise ParamError("input must be a string")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ParamError("input must be text without lone surrogate code points") from None
    # The size that counts is the encoded one: control characters take six bytes each.
    if len(json.dumps(text, ensure_ascii=False).encode("utf-8")) > MAX_INPUT_JSON_BYTES:
        raise ParamError(
            f"input is too long for one write (about {MAX_INPUT_JSON_BYTES // 1024} KiB at "
            "most); split it into several writes, or put a long text in a file first"
        )
    newline = params.get("append_newline", True)
    if not isinstance(newline, bool):
        raise ParamError("append_newline must be a boolean")
    return WriteSpec(_shell_id(params), text, newline)


def parse_signal(params: dict[str, Any]) -> tuple[str, str]:
    """shell.signal: (shell_id, signal name without SIG)."""
    check_keys(params, {"shell_id", "signal"})
    name = params.get("signal", "INT")
    if name not in SIGNALS:
        raise ParamError(f"signal must be one of {', '.join(SIGNALS)}, got {name!r:.40}")
    return _shell_id(params), str(name)


def parse_resize(params: dict[str, Any]) -> tuple[str, int, int]:
    """shell.resize: (shell_id, cols, rows); both sizes are required."""
    check_keys(params, {"shell_id", "cols", "rows"})
    for key in ("cols", "rows"):
        if key not in params:
            raise ParamError(f"shell.resize needs {key}")
    return (_shell_id(params), *_size(params))


def parse_shell_id(params: dict[str, Any]) -> str:
    """shell.close: just the shell."""
    check_keys(params, {"shell_id"})
    return _shell_id(params)
