"""Workspace rows: the record, and the command history whose sequence numbers never repeat.

A sequence number is taken in the same transaction that inserts the command's row, so two
processes running commands in one workspace at the same moment get distinct numbers and both
commands are recorded; reset leaves the history alone.
"""

from __future__ import annotations

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
