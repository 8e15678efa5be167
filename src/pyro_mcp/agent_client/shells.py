"""Host side of the shell operations: typed calls on a GuestClient.

Parameters go through the agent's own rules (protocol.shell_ops) before they are sent; every
answer is checked for type, range and consistency with the text that came with it, because the
guest is hostile. The agent's shell error codes become pyro's errors: an unknown shell is
NotFoundError, one that ended is WrongStateError, one too many is ConflictError.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyro_mcp.agent_client.base import field, malformed
from pyro_mcp.errors import (
    ConflictError,
    GuestError,
    InvalidArgumentError,
    NotFoundError,
    PyroError,
    WrongStateError,
)
from pyro_mcp.protocol import file_ops as pf
from pyro_mcp.protocol import frames, ops
from pyro_mcp.protocol import shell_ops as so

if TYPE_CHECKING:
    from pyro_mcp.agent_client.client import GuestClient

SHELL_TIMEOUT = 30.0
# A read may wait for quiet up to the agent's cap before it answers.
READ_TIMEOUT = so.IDLE_WAIT_CAP_S + SHELL_TIMEOUT
_ERRORS: dict[str, type[PyroError]] = {
    so.ERR_UNKNOWN_SHELL: NotFoundError,
    so.ERR_SHELL_ENDED: WrongStateError,
    so.ERR_TOO_MANY_SHELLS: ConflictError,
}


@dataclass(frozen=True)
class ShellInfo:
    """A shell as the guest describes it (times are the guest's, seconds since the epoch)."""

    shell_id: str
    cwd: str
    cols: int
    rows: int
    state: str  # running or stopped
    started_at: float
    ended_at: float | None
    exit_code: int | None


@dataclass(frozen=True)
class ShellOutput:
    """A window of a shell's output: characters cursor..next_cursor."""

    shell: ShellInfo
    cursor: int
    next_cursor: int
    output: str
    truncated: bool
    idle: bool


def _validate(parse: Callable[[dict[str, Any]], Any], params: dict[str, Any]) -> Any:
    try:
        return parse(params)
    except ops.ParamError as exc:
        raise InvalidArgumentError(str(exc)) from None


def _request(
    client: GuestClient,
    op: str,
    params: dict[str, Any],
    timeout: float = SHELL_TIMEOUT,
    on_output: Callable[[str, bytes], None] | None = None,
) -> dict[str, Any]:
    try:
        return client.request(op, params, timeout=timeout, on_output=on_output)
    except GuestError as exc:
        kind = _ERRORS.get(str(exc.details.get("guest_code")))
        if kind is None:
            raise
        raise kind(exc.message, guest_code=exc.details["guest_code"]) from None


def _number(result: dict[str, Any], key: str, *, optional: bool = False) -> float | None:
    value = result.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise malformed(f"shell result ({key})")
    return float(value)


def _info(result: dict[str, Any], shell_id: str | None = None) -> ShellInfo:
    """The shell view in a result, checked; `shell_id` is the one the request named."""
    sid = result.get("shell_id")
    if not so.valid_shell_id(sid) or (shell_id is not None and sid != shell_id):
        raise malformed("shell result (shell_id)")
    try:
        cwd = pf.logical(pf.workspace_parts(result.get("cwd")))
    except ops.ParamError:
        raise malformed("shell result (cwd)") from None
    state, code = result.get("state"), result.get("exit_code")
    if state not in so.STATES:
        raise malformed("shell result (state)")
    # A stopped shell has an exit code (128+N when signal N ended it); a running one none.
    if state == "stopped" and not 0 <= field(result, "exit_code", int) <= 255:
        raise malformed("shell result (exit_code out of range)")
    if state == "running" and code is not None:
        raise malformed("shell result (an exit code for a running shell)")
    started = _number(result, "started_at")
    assert started is not None
    return ShellInfo(
        shell_id=str(sid),
        cwd=cwd,
        cols=_size(result, "cols", so.MAX_COLS),
        rows=_size(result, "rows", so.MAX_ROWS),
        state=str(state),
        started_at=started,
        ended_at=_number(result, "ended_at", optional=True),
        exit_code=code,
    )


def _size(result: dict[str, Any], key: str, limit: int) -> int:
    value: int = field(result, key, int)
    if not 1 <= value <= limit:
        raise malformed(f"shell result ({key})")
    return value


def open_shell(
    client: GuestClient,
    *,
    cwd: str = pf.WORKSPACE,
    cols: int = so.DEFAULT_COLS,
    rows: int = so.DEFAULT_ROWS,
    secret_env: dict[str, str] | None = None,
) -> ShellInfo:
    """Start an interactive shell on a PTY of cols x rows in `cwd` (inside /workspace);
    secret_env {SECRET: ENV} maps installed secrets into its environment."""
    params: dict[str, Any] = {"cwd": cwd, "cols": cols, "rows": rows}
    if secret_env:
        params["secret_env"] = dict(secret_env)
    _validate(so.parse_open, params)
    return _info(_request(client, "shell.open", params))


def read_shell(
    client: GuestClient,
    shell_id: str,
    *,
    cursor: int = 0,
    max_chars: int = so.DEFAULT_MAX_CHARS,
    wait_for_idle_ms: int | None = None,
) -> ShellOutput:
    """The output from `cursor` (at most max_chars characters), after waiting in the guest
    for wait_for_idle_ms of quiet when that is given."""
    params = {"shell_id": shell_id, "cursor": cursor, "max_chars": max_chars}
    if wait_for_idle_ms is not None:
        params["wait_for_idle_ms"] = wait_for_idle_ms
    _validate(so.parse_read, params)
    data = bytearray()
    limit = 4 * max_chars  # UTF-8 takes at most four bytes a character

    def collect(stream: str, chunk: bytes) -> None:
        if stream != frames.DATA or len(data) + len(chunk) > limit:
            raise malformed("shell.read output (more than max_chars characters)")
        data.extend(chunk)

    result = _request(client, "shell.read", params, READ_TIMEOUT, collect)
    return _window(result, shell_id, cursor, max_chars, data)


def _window(
    result: dict[str, Any], shell_id: str, asked: int, max_chars: int, data: bytearray
) -> ShellOutput:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed("shell.read output (not UTF-8)") from None
    begin, end = field(result, "cursor", int), field(result, "next_cursor", int)
    if begin < asked or end - begin != len(text) or len(text) > max_chars:
        raise malformed("shell.read result (cursors disagree with the text)")
    truncated = field(result, "truncated", bool)
    if begin > asked and not truncated:
        raise malformed("shell.read result (output skipped without truncated)")
    return ShellOutput(
        _info(result, shell_id), begin, end, text, truncated, field(result, "idle", bool)
    )


def write_shell(
    client: GuestClient, shell_id: str, text: str, *, append_newline: bool = True
) -> tuple[ShellInfo, int]:
    """Type `text` (and a newline) into the shell's terminal; returns the bytes written."""
    params = {"shell_id": shell_id, "input": text, "append_newline": append_newline}
    spec: so.WriteSpec = _validate(so.parse_write, params)
    sent = len(spec.input.encode("utf-8")) + int(append_newline)
    result = _request(client, "shell.write", params)
    if field(result, "input_bytes", int) != sent:
        raise malformed("shell.write result (input_bytes is not what was sent)")
    return _info(result, shell_id), sent


def signal_shell(client: GuestClient, shell_id: str, signal_name: str = "INT") -> ShellInfo:
    """Send HUP, INT, TERM or KILL to the foreground job of the shell's terminal."""
    params = {"shell_id": shell_id, "signal": signal_name}
    _validate(so.parse_signal, params)
    result = _request(client, "shell.signal", params)
    if result.get("signal") != signal_name:
        raise malformed("shell.signal result (signal)")
    return _info(result, shell_id)


def resize_shell(client: GuestClient, shell_id: str, *, cols: int, rows: int) -> ShellInfo:
    """Change the terminal's window size (the foreground job gets SIGWINCH)."""
    params = {"shell_id": shell_id, "cols": cols, "rows": rows}
    _validate(so.parse_resize, params)
    return _info(_request(client, "shell.resize", params), shell_id)


def close_shell(client: GuestClient, shell_id: str) -> ShellInfo:
    """Hang up the shell's terminal and end everything in its session; the guest forgets it."""
    params = {"shell_id": shell_id}
    _validate(so.parse_shell_id, params)
    result = _request(client, "shell.close", params)
    if result.get("closed") is not True:
        raise malformed("shell.close result (closed)")
    return _info(result, shell_id)


def list_shells(client: GuestClient) -> list[ShellInfo]:
    """Every shell the guest keeps (exited ones too, until closed)."""
    shells = _request(client, "shell.list", {}).get("shells")
    if not isinstance(shells, list) or len(shells) > so.MAX_SHELLS:
        raise malformed("shell.list result")
    return [_info(item) if isinstance(item, dict) else _info({}) for item in shells]


__all__ = [
    "ShellInfo",
    "ShellOutput",
    "close_shell",
    "list_shells",
    "open_shell",
    "read_shell",
    "resize_shell",
    "signal_shell",
    "write_shell",
]
