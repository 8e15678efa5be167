"""Standby VMs: one restored, warmed-up VM per recently used (environment, size), waiting.

The next VM of that kind claims it (an atomic state change in the store) and takes over its
process instead of restoring one, and a replacement is started in the background. A standby
VM that nobody claims ends by itself after `PYRO_STANDBY_IDLE_SECONDS` (600 by default).
`PYRO_STANDBY=0` turns the pool off.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

from pyro_mcp.environments.service import InstalledEnvironment
from pyro_mcp.errors import PyroError
from pyro_mcp.runtime import launch, network
from pyro_mcp.runtime.backends import BackendChoice
from pyro_mcp.runtime.vm_boot import VmBoot
from pyro_mcp.runtime.vm_records import supervisor_of
from pyro_mcp.state import vms as vm_rows
from pyro_mcp.state.store import StateStore
from pyro_mcp.supervisor.main import remove_vm_files
from pyro_mcp.vmm.base import Snapshot

STANDBY_ENV = "PYRO_STANDBY"
IDLE_ENV = "PYRO_STANDBY_IDLE_SECONDS"
DEFAULT_IDLE_S = 600
STANDBY_STATES = ("standby", "standby-booting", "claimed")
CLAIM_MARGIN_S = 5  # a standby VM this close to its end is left to end


def enabled() -> bool:
    return os.environ.get(STANDBY_ENV, "1") != "0"


def idle_seconds() -> int:
    """How long an unclaimed standby VM waits before it ends itself."""
    try:
        return max(10, int(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)))
    except ValueError:
        return DEFAULT_IDLE_S


def _kind(row: dict[str, Any]) -> tuple[Any, ...]:
    kind = (row["environment"], row["vcpu_count"], row["mem_mib"], row["disk_mib"])
    return (*kind, bool(row["network_enabled"]))


def _alive(row: dict[str, Any]) -> bool:
    return supervisor_of(row).alive()


def _claimable(row: dict[str, Any]) -> bool:
    return _alive(row) and row["expires_at"] > time.time() + CLAIM_MARGIN_S


class StandbyPool:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    def claim(self, row: dict[str, Any], execution_mode: str) -> dict[str, Any] | None:
        """Take a ready standby VM of the same kind as `row` out of the pool, or None."""
        return vm_rows.claim_standby(self.store, row, execution_mode, _claimable)

    def adopt(self, row: dict[str, Any], choice: BackendChoice) -> bool:
        """Give the VM of `row` a ready standby VM's process; False when none could be had."""
        claimed = self.claim(row, choice.execution_mode)
        if claimed is None:
            return False
        try:
            self._hand_identity(Path(claimed["vm_dir"]), row)
        except PyroError:
            launch.stop_supervisor(
                Path(claimed["vm_dir"]), supervisor_of(claimed), "standby claim failed"
            )
            self.store.delete_vm(claimed["vm_id"])
            return False
        vm_rows.hand_over(self.store, claimed, row["vm_id"], time.time())
        return True

    @staticmethod
    def _hand_identity(vm_dir: Path, row: dict[str, Any]) -> None:
        """The supervisor takes the VM's id, TTL and owner; the guest its own identity."""
        vm_id = row["vm_id"]
        with launch.connect(vm_dir, timeout=2.0) as client:
            claim = {
                "vm_id": vm_id,
                "expires_at": row["expires_at"],
                "owner_pid": row["owner_pid"],
                "owner_start": row["owner_start"],
                "delete_on_exit": row["owner_pid"] is not None,
            }
            client.request("vm.claim", claim, timeout=5.0)
            allow_hosts = network.stored_allow_hosts(row)
            if allow_hosts:  # a standby VM starts with plain egress
                client.request("net.allow", {"allow_hosts": allow_hosts}, timeout=30.0)
            client.configure(
                hostname=f"pyro-{vm_id[:8]}",
                machine_id=uuid.uuid4().hex,
                time_ns=time.time_ns(),
                entropy=os.urandom(64),
            )

    def replenish(
        self,
        boot: VmBoot,
        row: dict[str, Any],
        installed: InstalledEnvironment,
        choice: BackendChoice,
        snapshot: Snapshot,
    ) -> None:
        """Start a standby VM of `row`'s kind in the background unless one exists."""
        self.forget_dead()
        if self.wanted(row, choice.execution_mode):
            record = self.new_record(row, choice.execution_mode)
            boot.spawn_standby(record, installed, choice, snapshot)

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
            "network_enabled": int(bool(template["network_enabled"])),
        }
        self.store.insert_vm(record)
        if record["network_enabled"]:
            try:
                record["net_slot"] = network.reserve(self.store, vm_id)
            except BaseException:
                self.store.delete_vm(vm_id)
                raise
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

    def clear(self) -> dict[str, Any]:
        """Stop every standby VM (they also end by themselves when idle)."""
        stopped = []
        for row in self.standby_rows():
            launch.stop_supervisor(Path(row["vm_dir"]), supervisor_of(row), "standby cleared")
            self.store.delete_vm(row["vm_id"])
            remove_vm_files(Path(row["vm_dir"]))
            stopped.append(row["vm_id"])
        return {"stopped_vm_ids": stopped, "count": len(stopped)}
