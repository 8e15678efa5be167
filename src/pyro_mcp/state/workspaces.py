"""Workspace rows: the record, and the command history whose sequence numbers never repeat.

A sequence number is taken in the same transaction that inserts the command's row, so two
processes running commands in one workspace at the same moment get distinct numbers and both
commands are recorded; reset leaves the history alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pyro_mcp.state.store import StateStore


def list_workspaces(store: StateStore) -> list[dict[str, Any]]:
    with store.connect() as conn:
        rows = conn.execute("SELECT * FROM workspaces ORDER BY created_at").fetchall()
    return [dict(row) for row in rows]


def delete_workspace(store: StateStore, workspace_id: str) -> bool:
    with store.transaction() as conn:
        conn.execute("DELETE FROM workspace_commands WHERE workspace_id = ?", (workspace_id,))
        cursor = conn.execute("DELETE FROM workspaces WHERE workspace_id = ?", (workspace_id,))
    return cursor.rowcount > 0


def stop_unchanged(store: StateStore, row: Mapping[str, Any], reason: str) -> None:
    """Record the workspace as stopped for `reason`, unless its state or VM changed since
    `row` was read."""
    with store.transaction() as conn:
        conn.execute(
            "UPDATE workspaces SET state = 'stopped', stop_reason = ?, vm_id = NULL "
            "WHERE workspace_id = ? AND state = ? AND vm_id IS ?",
            (reason, row["workspace_id"], row["state"], row["vm_id"]),
        )


def count_reset(store: StateStore, workspace_id: str, at: float) -> None:
    with store.transaction() as conn:
        conn.execute(
            "UPDATE workspaces SET reset_count = reset_count + 1, last_reset_at = ? "
            "WHERE workspace_id = ?",
            (at, workspace_id),
        )


def rename(
    store: StateStore,
    workspace_id: str,
    change: Callable[[dict[str, Any]], tuple[str | None, str]],
) -> None:
    """Write the (name, labels) that `change` makes of the current ones, read in the same
    transaction: two updates of different labels both land. LookupError: no such workspace."""
    with store.transaction() as conn:
        row = conn.execute(
            "SELECT name, labels FROM workspaces WHERE workspace_id = ?", (workspace_id,)
        ).fetchone()
        if row is None:
            raise LookupError(workspace_id)
        name, labels = change(dict(row))
        conn.execute(
            "UPDATE workspaces SET name = ?, labels = ? WHERE workspace_id = ?",
            (name, labels, workspace_id),
        )


def begin_command(
    store: StateStore, workspace_id: str, command: str, cwd: str, started_at: float
) -> int:
    """Take the next sequence number and record the command as running; returns the number."""
    with store.transaction() as conn:
        row = conn.execute(
            "UPDATE workspaces SET command_count = command_count + 1, last_activity_at = ? "
            "WHERE workspace_id = ? RETURNING command_count",
            (started_at, workspace_id),
        ).fetchone()
        if row is None:
            raise LookupError(workspace_id)
        sequence = int(row[0])
        conn.execute(
            "INSERT INTO workspace_commands (workspace_id, sequence, command, cwd, started_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (workspace_id, sequence, command, cwd, started_at),
        )
    return sequence


def finish_command(store: StateStore, workspace_id: str, sequence: int, **fields: Any) -> None:
    where = {"workspace_id": workspace_id, "sequence": sequence}
    store.update_where("workspace_commands", where, **fields)


def list_commands(store: StateStore, workspace_id: str) -> list[dict[str, Any]]:
    with store.connect() as conn:
        rows = conn.execute(
            "SELECT * FROM workspace_commands WHERE workspace_id = ? ORDER BY sequence",
            (workspace_id,),
        ).fetchall()
    return [dict(row) for row in rows]


def last_command(store: StateStore, workspace_id: str) -> dict[str, Any] | None:
    with store.connect() as conn:
        row = conn.execute(
            "SELECT * FROM workspace_commands WHERE workspace_id = ? "
            "ORDER BY sequence DESC LIMIT 1",
            (workspace_id,),
        ).fetchone()
    return dict(row) if row is not None else None
