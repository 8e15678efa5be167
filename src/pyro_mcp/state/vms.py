"""VM rows that change together: a standby VM claimed, and its process handed to another VM.

Each function is one `BEGIN IMMEDIATE` transaction, so two processes never claim the same
standby VM and no reader ever sees a hand-over half done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pyro_mcp.state.store import StateStore


def claim_standby(
    store: StateStore,
    kind: Mapping[str, Any],
    execution_mode: str,
    usable: Callable[[dict[str, Any]], bool],
) -> dict[str, Any] | None:
    """Mark the oldest `usable` standby VM of `kind` (environment, vcpu_count, mem_mib,
    disk_mib, network_enabled) `claimed`; returns its row as it was before, or None."""
    with store.transaction() as conn:
        rows = conn.execute(
            "SELECT * FROM vms WHERE state = 'standby' AND environment = ? AND "
            "vcpu_count = ? AND mem_mib = ? AND disk_mib = ? AND network_enabled = ? "
            "AND execution_mode = ? ORDER BY created_at",
            (kind["environment"], kind["vcpu_count"], kind["mem_mib"], kind["disk_mib"],
             kind["network_enabled"], execution_mode),
        ).fetchall()  # fmt: skip
        for row in map(dict, rows):
            if usable(row):
                conn.execute("UPDATE vms SET state = 'claimed' WHERE vm_id = ?", (row["vm_id"],))
                return row
    return None


def hand_over(store: StateStore, claimed: Mapping[str, Any], vm_id: str, started_at: float) -> None:
    """VM `vm_id` becomes the started VM that the claimed standby VM was, network uplink
    included; the standby's own row goes."""
    with store.transaction() as conn:
        conn.execute("DELETE FROM vms WHERE vm_id = ?", (claimed["vm_id"],))
        conn.execute(
            "UPDATE vms SET state = 'started', backend = ?, execution_mode = ?, vm_dir = ?, "
            "supervisor_pid = ?, supervisor_start = ?, started_at = ?, stop_reason = NULL, "
            "boot_mode = 'standby', boot_note = '', net_slot = ? WHERE vm_id = ?",
            (claimed["backend"], claimed["execution_mode"], claimed["vm_dir"],
             claimed["supervisor_pid"], claimed["supervisor_start"], started_at,
             claimed["net_slot"], vm_id),
        )  # fmt: skip


def serving_workspace(store: StateStore, workspace_id: str) -> list[str]:
    """The ids of every VM recorded as serving the workspace."""
    with store.connect() as conn:
        found = conn.execute("SELECT vm_id FROM vms WHERE workspace_id = ?", (workspace_id,))
        return [row[0] for row in found]
