"""Workspace snapshot rows: the name, time and size of each named snapshot of a workspace's
disk (the snapshot's data lives in the disk image itself; see vmm/qcow2.py)."""

from __future__ import annotations

import sqlite3
from typing import Any

from pyro_mcp.state.schema import SNAPSHOT_COLUMNS
from pyro_mcp.state.store import StateStore

_INSERT = (
    f"INSERT INTO workspace_snapshots ({', '.join(SNAPSHOT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(SNAPSHOT_COLUMNS))})"
)


def add(store: StateStore, row: dict[str, Any]) -> bool:
    """Record a new snapshot; False if the workspace already has one of that name."""
    try:
        with store.transaction() as conn:
            conn.execute(_INSERT, [row[c] for c in SNAPSHOT_COLUMNS])
    except sqlite3.IntegrityError:
        return False
    return True


def get(store: StateStore, workspace_id: str, name: str) -> dict[str, Any] | None:
    with store.connect() as conn:
        row = conn.execute(
            "SELECT * FROM workspace_snapshots WHERE workspace_id = ? AND snapshot_name = ?",
            (workspace_id, name),
        ).fetchone()
    return dict(row) if row is not None else None


def list_for(store: StateStore, workspace_id: str) -> list[dict[str, Any]]:
    """The workspace's named snapshots, newest first."""
    with store.connect() as conn:
        rows = conn.execute(
            "SELECT * FROM workspace_snapshots WHERE workspace_id = ? "
            "ORDER BY created_at DESC, snapshot_name",
            (workspace_id,),
        ).fetchall()
    return [dict(row) for row in rows]


def remove(store: StateStore, workspace_id: str, name: str) -> None:
    with store.transaction() as conn:
        conn.execute(
            "DELETE FROM workspace_snapshots WHERE workspace_id = ? AND snapshot_name = ?",
            (workspace_id, name),
        )


def delete_for_workspace(store: StateStore, workspace_id: str) -> None:
    with store.transaction() as conn:
        conn.execute("DELETE FROM workspace_snapshots WHERE workspace_id = ?", (workspace_id,))
