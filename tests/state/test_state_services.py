"""Workspace service rows: the guest's reports copied in, unreported runs ended with the right
reason, lifecycle ends, counts for listings, and the table a migration adds."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from pyro_mcp.state import schema
from pyro_mcp.state import services as rows
from pyro_mcp.state.schema import SERVICE_COLUMNS
from pyro_mcp.state.store import StateStore


def service(name: str, run_id: str = "0" * 16, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(SERVICE_COLUMNS)
    row.update(
        workspace_id="ws1", service_name=name, run_id=run_id, vm_id="vm1", state="running",
        command="serve", cwd="/workspace", started_at=time.time(), published_ports="[]",
        recorded_at=time.time(),
    )  # fmt: skip
    row.update(fields)
    return row


def states(store: StateStore, workspace_id: str = "ws1") -> dict[str, tuple[str, str | None]]:
    return {
        r["service_name"]: (r["state"], r["stop_reason"])
        for r in rows.list_for(store, workspace_id)
    }


def test_a_sync_records_the_guests_view_and_ends_what_it_no_longer_reports(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path)
    rows.sync(store, "ws1", "vm1", [service("web"), service("db"), service("old")], at=1.0)
    assert states(store) == dict.fromkeys(("web", "db", "old"), ("running", None))
    # The guest now reports web exited and knows nothing of old (its agent restarted).
    exited = service("web", state="exited", exit_code=3, ended_at=5.0)
    rows.sync(store, "ws1", "vm1", [exited, service("db")], at=9.0)
    assert states(store) == {
        "web": ("exited", None), "db": ("running", None), "old": ("stopped", "guest_lost"),
    }  # fmt: skip
    old = rows.get(store, "ws1", "old")
    assert old is not None and old["ended_at"] == 9.0 and old["published_ports"] == "[]"
    web = rows.get(store, "ws1", "web")
    assert web is not None and (web["exit_code"], web["ended_at"]) == (3, 5.0)


def test_runs_of_another_vm_end_as_workspace_stopped(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rows.sync(store, "ws1", "vm1", [service("web")], at=1.0)
    # A new VM whose guest runs a new `web` run and nothing else.
    rows.sync(store, "ws1", "vm2", [service("db", "1" * 16, vm_id="vm2")], at=2.0)
    assert states(store) == {"web": ("stopped", "workspace_stopped"), "db": ("running", None)}
    rows.sync(store, "ws1", "vm2", [], at=3.0)
    assert states(store)["db"] == ("stopped", "guest_lost")


def test_a_restarted_name_replaces_its_earlier_run(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rows.put(store, service("web", state="stopped", stop_reason="sigterm"))
    rows.put(store, service("web", "2" * 16, command="serve --again"))
    (row,) = rows.list_for(store, "ws1")
    assert (row["run_id"], row["state"], row["command"]) == ("2" * 16, "running", "serve --again")


def test_lifecycle_ends_counts_and_delete(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rows.put(store, service("a"))
    rows.put(store, service("b", state="failed", stop_reason="readiness_timeout"))
    rows.put(store, service("c", workspace_id="ws2", published_ports='[{"host_port": 1}]'))
    assert rows.counts(store) == {"ws1": (2, 1), "ws2": (1, 1)}
    assert rows.counts_of(store, "ws1") == (2, 1) and rows.counts_of(store, "none") == (0, 0)
    assert rows.end_running(store, "ws2", "workspace_reset", 7.0) == 1
    assert states(store, "ws2") == {"c": ("stopped", "workspace_reset")}
    ended = rows.get(store, "ws2", "c")
    assert ended is not None and (ended["ended_at"], ended["published_ports"]) == (7.0, "[]")
    assert states(store)["b"] == ("failed", "readiness_timeout")  # other workspaces untouched
    rows.delete_for_workspace(store, "ws1")
    assert rows.counts(store) == {"ws2": (1, 0)}


def test_the_migration_adds_the_table_to_a_version_2_database(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    for step in schema.MIGRATIONS[:2]:
        step(conn)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    store = StateStore(tmp_path)
    with store.connect() as live:
        found = tuple(r[1] for r in live.execute("PRAGMA table_info(workspace_services)"))
        (version,) = live.execute("PRAGMA user_version").fetchone()
    assert found == SERVICE_COLUMNS and version == schema.current_version()
