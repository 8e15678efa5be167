"""Workspace service rows: the host's record of each service's last run.

While a workspace runs, its guest is the source of truth and `sync` copies what the guest
reports over these rows in one transaction; rows the guest no longer knows are ended there.
When the workspace's VM goes (stop, reset, a dead VM), `end_running` marks what was running
`stopped` with the reason, so a service is never silently forgotten. Counts for listings come
from here alone: no guest is asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pyro_mcp.state.schema import SERVICE_COLUMNS
from pyro_mcp.state.store import StateStore

_INSERT = (
    f"INSERT INTO workspace_services ({', '.join(SERVICE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(SERVICE_COLUMNS))}) "
    "ON CONFLICT (workspace_id, service_name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SERVICE_COLUMNS[2:])
)
# Running rows the guest does not report: from another VM (its end was not recorded) or lost
# by the guest (its agent restarted and killed what it did not know).
_END_UNREPORTED = (
    "UPDATE workspace_services SET state = 'stopped', "
    "stop_reason = CASE WHEN vm_id IS ? THEN ? ELSE ? END, "
    "ended_at = COALESCE(ended_at, ?), published_ports = '[]' "
    "WHERE workspace_id = ? AND state = 'running' "
    "AND NOT (vm_id IS ? AND service_name || ':' || run_id IN ({}))"
)


def sync(
    store: StateStore,
    workspace_id: str,
    vm_id: str,
    rows: Iterable[Mapping[str, Any]],
    *,
    at: float,
    lost_reason: str = "guest_lost",
    gone_reason: str = "workspace_stopped",
) -> None:
    """Record what the guest of VM `vm_id` reports (`rows`, full rows) and end every other
    running row of the workspace: `lost_reason` if it was this VM's, else `gone_reason`."""
    rows = list(rows)
    marks = ", ".join("?" * len(rows))
    with store.transaction() as conn:
        for row in rows:
            conn.execute(_INSERT, [row[c] for c in SERVICE_COLUMNS])
        conn.execute(
            _END_UNREPORTED.format(marks),
            (vm_id, lost_reason, gone_reason, at, workspace_id, vm_id,
             *(f"{row['service_name']}:{row['run_id']}" for row in rows)),
        )  # fmt: skip


def put(store: StateStore, row: Mapping[str, Any]) -> None:
    """Record one service's run (inserted, or over its earlier run)."""
    with store.transaction() as conn:
        conn.execute(_INSERT, [row[c] for c in SERVICE_COLUMNS])


def get(store: StateStore, workspace_id: str, service_name: str) -> dict[str, Any] | None:
    with store.connect() as conn:
        row = conn.execute(
            "SELECT * FROM workspace_services WHERE workspace_id = ? AND service_name = ?",
            (workspace_id, service_name),
        ).fetchone()
    return dict(row) if row is not None else None


def list_for(store: StateStore, workspace_id: str) -> list[dict[str, Any]]:
    """The workspace's services, oldest start first."""
    with store.connect() as conn:
        rows = conn.execute(
            "SELECT * FROM workspace_services WHERE workspace_id = ? "
            "ORDER BY started_at, service_name",
            (workspace_id,),
        ).fetchall()
    return [dict(row) for row in rows]


def end_running(store: StateStore, workspace_id: str, reason: str, at: float) -> int:
    """Mark every running service of the workspace stopped for `reason` (its VM went);
    returns how many were."""
    with store.transaction() as conn:
        cursor = conn.execute(
            "UPDATE workspace_services SET state = 'stopped', stop_reason = ?, "
            "ended_at = COALESCE(ended_at, ?), published_ports = '[]' "
            "WHERE workspace_id = ? AND state = 'running'",
            (reason, at, workspace_id),
        )
    return cursor.rowcount


def delete_for_workspace(store: StateStore, workspace_id: str) -> None:
    with store.transaction() as conn:
        conn.execute("DELETE FROM workspace_services WHERE workspace_id = ?", (workspace_id,))


def counts(store: StateStore) -> dict[str, tuple[int, int]]:
    """workspace_id -> (service_count, running_service_count), for every workspace with
    services, in one query; as of each workspace's last service call or lifecycle change."""
    with store.connect() as conn:
        rows = conn.execute(
            "SELECT workspace_id, COUNT(*), SUM(state = 'running') FROM workspace_services "
            "GROUP BY workspace_id"
        ).fetchall()
    return {row[0]: (int(row[1]), int(row[2] or 0)) for row in rows}


def counts_of(store: StateStore, workspace_id: str) -> tuple[int, int]:
    """(service_count, running_service_count) of one workspace."""
    with store.connect() as conn:
        row = conn.execute(
            "SELECT COUNT(*), SUM(state = 'running') FROM workspace_services "
            "WHERE workspace_id = ?",
            (workspace_id,),
        ).fetchone()
    return int(row[0]), int(row[1] or 0)
