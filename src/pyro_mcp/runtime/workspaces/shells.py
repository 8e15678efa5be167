"""Interactive shells of a started workspace: open, read, write, signal, resize, close.

A shell lives in the guest agent, not on the host: it outlives the process that opened it,
sleeps through a stop that keeps the guest's memory, and ends with the guest (reset, delete,
the TTL, a start without that memory), so nothing about it is stored here.
Reads address the output by character offsets (see protocol/shell_ops.py): next_cursor of one
read is the cursor of the next, and a cursor older than what the guest keeps (the last
1,048,576 characters) comes back `truncated` from the oldest character kept. The wait for quiet
(wait_for_idle_ms) happens in the guest, in one request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pyro_mcp.agent_client import shells as guest
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.errors import InvalidArgumentError, NotFoundError, WrongStateError
from pyro_mcp.protocol import shell_ops as so
from pyro_mcp.runtime import launch
from pyro_mcp.runtime.workspaces import records, terminal
from pyro_mcp.runtime.workspaces.service import WorkspaceService

_GONE_HINT = (
    "shells end when they are closed and when the workspace resets, is deleted, or starts "
    "without the memory its stop kept; open a new one with open_shell (CLI: `pyro workspace "
    "shell open`)"
)


def shell_view(workspace_id: str, info: guest.ShellInfo, row: dict[str, Any]) -> dict[str, Any]:
    """The contract's Shell shape."""
    return {
        "workspace_id": workspace_id,
        "shell_id": info.shell_id,
        "cwd": info.cwd,
        "cols": info.cols,
        "rows": info.rows,
        "state": info.state,
        "started_at": info.started_at,
        "ended_at": info.ended_at,
        "exit_code": info.exit_code,
        "execution_mode": row["execution_mode"],
    }


def _check_int(name: str, value: Any, low: int, high: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgumentError(
            f"{name} must be an integer between {low} and {high}, got {value!r:.40}", hint=hint
        )
    return value


class WorkspaceShells:
    """The shells of workspaces, through each workspace's guest agent."""

    def __init__(self, service: WorkspaceService) -> None:
        self.service = service

    @contextlib.contextmanager
    def _client(
        self, workspace_id: str, op: str, shell_id: str | None = None
    ) -> Iterator[tuple[dict[str, Any], GuestClient]]:
        """The started workspace and a connection to its guest; a shell the guest does not
        know becomes the contract's NotFoundError, naming the shell and the workspace."""
        if shell_id is not None and not so.valid_shell_id(shell_id):
            raise self._unknown(workspace_id, shell_id)
        with (
            self.service.using(workspace_id, op) as (row, vm_dir),
            launch.connect(vm_dir) as client,
        ):
            try:
                yield row, client
            except NotFoundError as exc:
                if shell_id is None or exc.details.get("guest_code") != so.ERR_UNKNOWN_SHELL:
                    raise
                raise self._unknown(workspace_id, shell_id) from None
            except WrongStateError as exc:
                raise WrongStateError(
                    f"{exc.message} (workspace {workspace_id})",
                    hint="its output stays readable; close it and open a new shell to go on",
                ) from None

    def _unknown(self, workspace_id: str, shell_id: Any) -> NotFoundError:
        self.service.known_directory(workspace_id)  # an unknown workspace is said first
        return NotFoundError(
            f"shell {shell_id!r:.40} does not exist in workspace {workspace_id!r}",
            hint=_GONE_HINT,
        )

    def open(
        self,
        workspace_id: str,
        *,
        cwd: str = records.WORKSPACE_PATH,
        cols: int = so.DEFAULT_COLS,
        rows: int = so.DEFAULT_ROWS,
        secret_env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Start an interactive shell (bash, else sh) on a cols x rows terminal in `cwd`."""
        _check_int("cols", cols, 1, so.MAX_COLS, "pass a terminal width in columns")
        _check_int("rows", rows, 1, so.MAX_ROWS, "pass a terminal height in rows")
        mapped = self.service.secret_env(workspace_id, secret_env)
        with self._client(workspace_id, "shell open") as (row, client):
            info = guest.open_shell(client, cwd=cwd, cols=cols, rows=rows, secret_env=mapped)
        return shell_view(workspace_id, info, row)

    def read(
        self,
        workspace_id: str,
        shell_id: str,
        *,
        cursor: int = 0,
        max_chars: int = so.DEFAULT_MAX_CHARS,
        plain: bool = False,
        wait_for_idle_ms: int | None = None,
    ) -> dict[str, Any]:
        """Output from `cursor`: at most max_chars characters, rendered as a terminal shows
        them with plain, after the guest waited for wait_for_idle_ms of quiet if given."""
        _check_int("cursor", cursor, 0, 2**62, "pass 0 or the next_cursor of the last read")
        _check_int("max_chars", max_chars, 1, so.MAX_READ_CHARS, "read less at a time")
        if wait_for_idle_ms is not None:
            _check_int(
                "wait_for_idle_ms", wait_for_idle_ms, 1, so.MAX_IDLE_MS,
                "pass None (CLI: leave --wait-for-idle-ms out) to read without waiting",
            )  # fmt: skip
        with self._client(workspace_id, "shell read", shell_id) as (row, client):
            got = guest.read_shell(
                client, shell_id, cursor=cursor, max_chars=max_chars,
                wait_for_idle_ms=wait_for_idle_ms,
            )  # fmt: skip
        output = got.output
        if plain:
            output = terminal.render(output, cols=got.shell.cols, rows=got.shell.rows)
        return {
            **shell_view(workspace_id, got.shell, row),
            "cursor": got.cursor,
            "next_cursor": got.next_cursor,
            "output": output,
            "truncated": got.truncated,
            "plain": bool(plain),
            "wait_for_idle_ms": wait_for_idle_ms,
        }

    def write(
        self, workspace_id: str, shell_id: str, *, input: str, append_newline: bool = True
    ) -> dict[str, Any]:
        """Type `input` into the shell's terminal, then Enter unless append_newline is False."""
        if not isinstance(input, str):
            raise InvalidArgumentError("input must be a string")
        with self._client(workspace_id, "shell write", shell_id) as (row, client):
            info, _ = guest.write_shell(client, shell_id, input, append_newline=append_newline)
        return {
            **shell_view(workspace_id, info, row),
            "input_length": len(input),
            "append_newline": bool(append_newline),
        }

    def signal(
        self, workspace_id: str, shell_id: str, *, signal_name: str = "INT"
    ) -> dict[str, Any]:
        """Send HUP, INT, TERM or KILL to the job in the foreground of the shell's terminal
        (the shell itself at its prompt), as a terminal's keys would."""
        if signal_name not in so.SIGNALS:
            raise InvalidArgumentError(
                f"signal_name must be one of {', '.join(so.SIGNALS)}, got {signal_name!r:.40}"
            )
        with self._client(workspace_id, "shell signal", shell_id) as (row, client):
            info = guest.signal_shell(client, shell_id, signal_name)
        return {**shell_view(workspace_id, info, row), "signal": signal_name}

    def resize(self, workspace_id: str, shell_id: str, *, cols: int, rows: int) -> dict[str, Any]:
        """Change the terminal's size; the program in the foreground is told (SIGWINCH)."""
        _check_int("cols", cols, 1, so.MAX_COLS, "pass a terminal width in columns")
        _check_int("rows", rows, 1, so.MAX_ROWS, "pass a terminal height in rows")
        with self._client(workspace_id, "shell resize", shell_id) as (row, client):
            info = guest.resize_shell(client, shell_id, cols=cols, rows=rows)
        return shell_view(workspace_id, info, row)

    def close(self, workspace_id: str, shell_id: str) -> dict[str, Any]:
        """Hang up the shell's terminal and end every process of its session (SIGKILL after
        a short grace); the guest forgets the shell, so later calls on it are NotFoundError."""
        with self._client(workspace_id, "shell close", shell_id) as (row, client):
            info = guest.close_shell(client, shell_id)
        return {**shell_view(workspace_id, info, row), "closed": True}
