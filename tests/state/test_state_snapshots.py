"""Workspace snapshot rows: one name per workspace, newest first, gone with the workspace."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pyro_mcp.state import schema
from pyro_mcp.state import snapshots as rows
from pyro_mcp.state.schema import SNAPSHOT_COLUMNS
from pyro_mcp.state.store import StateStore


def row(workspace_id: str, name: str, at: float) -> dict[str, object]:
    return {"workspace_id": workspace_id, "snapshot_name": name, "created_at": at,
            "entry_count": 3, "bytes_written": 4096}  # fmt: skip


def test_add_get_list_remove(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert rows.add(store, row("ws1", "a", 1.0)) and rows.add(store, row("ws1", "b", 2.0))
    assert rows.add(store, row("ws2", "a", 3.0))
    assert not rows.add(store, row("ws1", "a", 4.0))  # taken
    assert [r["snapshot_name"] for r in rows.list_for(store, "ws1")] == ["b", "a"]
    found = rows.get(store, "ws1", "a")
    assert found is not None and found["created_at"] == 1.0
    rows.remove(store, "ws1", "a")
    assert rows.get(store, "ws1", "a") is None
    rows.delete_for_workspace(store, "ws1")
    assert rows.list_for(store, "ws1") == [] and len(rows.list_for(store, "ws2")) == 1


def test_the_migration_adds_the_table_to_a_version_3_database(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.sqlite3", isolation_level=None)
    for step in schema.MIGRATIONS[:3]:
        step(conn)
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    with StateStore(tmp_path).connect() as live:
        found = tuple(r[1] for r in live.execute("PRAGMA table_info(workspace_snapshots)"))
    assert found == SNAPSHOT_COLUMNS
