"""Standby VMs: one restored, warmed-up VM per recently used (environment, size), waiting.

The next VM of that kind claims it (an atomic state change in the store) instead of restoring
one, and a replacement is started in the background. A standby VM that nobody claims ends by
itself after `PYRO_STANDBY_IDLE_SECONDS` (600 by default). `PYRO_STANDBY=0` turns the pool off.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import Any

from pyro_mcp.host.process import ProcessRef
from pyro_mcp.state.store import StateStore

STANDBY_ENV = "PYRO_STANDBY"
IDLE_ENV = "PYRO_STANDBY_IDLE_SECONDS"
DEFAULT_IDLE_S = 600
STANDBY_STATES = ("standby", "standby-booting", "claimed")


def enabled() -> bool:
    return os.environ.get(STANDBY_ENV, "1") != "0"


def idle_seconds() -> int:
    """How long an unclaimed standby VM waits before it ends itself."""
    try:
        return max(10, int(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)))
    except ValueError:
        return DEFAULT_IDLE_S


def _kind(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["environment"], row["vcpu_count"], row["mem_mib"], row["disk_mib"])


def _alive(row: dict[str, Any]) -> bool:
    return ProcessRef(row["supervisor_pid"] or 0, row["supervisor_start"] or 0).alive()


class StandbyPool:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    def claim(self, row: dict[str, Any], execution_mode: str) -> dict[str, Any] | None:
        """Take a ready standby VM of the same kind as `row` out of the pool, or None."""
        with self.store.transaction() as conn:
            rows = conn.execute(
                "SELECT * FROM vms WHERE state = 'standby' AND environment = ? AND "
                "vcpu_count = ? AND mem_mib = ? AND disk_mib = ? AND execution_mode = ? "
                "ORDER BY created_at",
                (*_kind(row), execution_mode),
            ).fetchall()
            for row in map(dict, rows):
                if _alive(row) and row["expires_at"] > time.time() + 5:
                    conn.execute(
                        "UPDATE vms SET state = 'claimed' WHERE vm_id = ?", (row["vm_id"],)
                    )
                    return row
        return None

    def wanted(self, row: dict[str, Any], execution_mode: str) -> bool:
        """True when no live standby of `row`'s kind is ready or on its way."""
        kind = (*_kind(row), execution_mode)
        for other in self.store.list_vms():
            same = (*_kind(other), other["execution_mode"]) == kind
            if same and other["state"] in ("standby", "standby-booting") and _alive(other):
                return False
        return True

    def new_record(self, template: dict[str, Any], execution_mode: str) -> dict[str, Any]:
        vm_id = uuid.uuid4().hex[:12]
        now = time.time()
        record = {
            "vm_id": vm_id,
            "environment": template["environment"],
            "environment_version": template["environment_version"],
            "vcpu_count": template["vcpu_count"],
            "mem_mib": template["mem_mib"],
            "disk_mib": template["disk_mib"],
            "ttl_seconds": idle_seconds(),
            "created_at": now,
            "expires_at": now + idle_seconds(),
            "state": "standby-booting",
            "execution_mode": execution_mode,
            "vm_dir": str(self.store.vm_dir(vm_id)),
        }
        self.store.insert_vm(record)
        return record

    def standby_rows(self) -> list[dict[str, Any]]:
        return [row for row in self.store.list_vms() if row["state"] in STANDBY_STATES]

    def forget_dead(self) -> None:
        """Drop rows of standby VMs whose supervisor is gone (a row just made has no pid yet)."""
        settled = time.time() - 30
        for row in self.standby_rows():
            if row["created_at"] < settled and not _alive(row):
                with contextlib.suppress(Exception):
                    self.store.delete_vm(row["vm_id"])
