"""VM lifecycle with the public contract's parameters, defaults and result keys.

A VM record lives in the state store; a started VM is a supervisor process that owns the VMM.
Every call reconciles the record it touches (vm_records.py). Booting is in vm_boot.py,
standby VMs in standby.py, one-shot runs in one_shot.py, result shapes in vm_views.py.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyro_mcp.agent_client.client import ExecResult
from pyro_mcp.environments.service import EnvironmentService
from pyro_mcp.errors import InvalidArgumentError, NotFoundError, WrongStateError
from pyro_mcp.host.process import ProcessRef
from pyro_mcp.runtime import backends, launch, one_shot, standby, vm_records
from pyro_mcp.runtime import network as net
from pyro_mcp.runtime.arguments import Command, OutputCallback, check_range, command_parts
from pyro_mcp.runtime.snapshots import SnapshotCache
from pyro_mcp.runtime.standby import StandbyPool
from pyro_mcp.runtime.vm_boot import VmBoot
from pyro_mcp.runtime.vm_views import vm_view
from pyro_mcp.state.store import StateStore
from pyro_mcp.supervisor.main import make_backend, remove_vm_files

Phase = Callable[[str], None]


class VmService:
    def __init__(
        self,
        envs: EnvironmentService,
        store: StateStore | None = None,
        snapshots: SnapshotCache | None = None,
    ) -> None:
        self.envs = envs
        self.store = store or StateStore()
        self.snapshots = snapshots or SnapshotCache(envs.store.root.parent / "snapshots")
        self.pool = StandbyPool(self.store)
        self.boot = VmBoot(self.store, self.snapshots)

    def reconcile(self, row: dict[str, Any]) -> dict[str, Any]:
        """`row` as it really is: a started VM whose supervisor is gone reads as stopped."""
        return vm_records.reconcile(self.store, row)

    def create_vm(
        self,
        *,
        environment: str,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        ttl_seconds: int = 600,
        network: bool = False,
        allow_host_compat: bool = False,
        _owner: ProcessRef | None = None,
        _disk_mib: int = 0,
        _disk_path: Path | None = None,
        _workspace_id: str | None = None,
        _expires_at: float | None = None,
        _allow_hosts: list[str] | None = None,
    ) -> dict[str, Any]:
        """Record a VM (state `created`); nothing runs until start_vm. `network=True` gives it
        egress to public addresses (and an uplink slot, held until it stops).

        A workspace's VM keeps its disk at `_disk_path`, outside the VM's directory."""
        del allow_host_compat  # accepted for compatibility: commands never run on the host
        vcpu_count = check_range("vcpu_count", vcpu_count)
        mem_mib = check_range("mem_mib", mem_mib)
        ttl_seconds = check_range("ttl_seconds", ttl_seconds)
        if not isinstance(network, bool):
            raise InvalidArgumentError(f"network must be true or false, got {network!r}")
        allow_hosts = net.check_allow_hosts(_allow_hosts, network)
        env = self.envs.inspect(environment)
        vm_id = uuid.uuid4().hex[:12]
        now = time.time()
        record = {
            "vm_id": vm_id,
            "environment": env["name"],
            "environment_version": env["version"],
            "vcpu_count": vcpu_count,
            "mem_mib": mem_mib,
            "ttl_seconds": ttl_seconds,
            "created_at": now,
            "expires_at": _expires_at or now + ttl_seconds,
            "state": "created",
            "execution_mode": "pending",
            "vm_dir": str(self.store.vm_dir(vm_id)),
            "owner_pid": _owner.pid if _owner else None,
            "owner_start": _owner.start if _owner else None,
            "disk_mib": _disk_mib,
            "disk_path": str(_disk_path) if _disk_path else None,
            "workspace_id": _workspace_id,
            "network_enabled": int(network),
            "allow_hosts": json.dumps(allow_hosts),
        }
        self.store.insert_vm(record)
        if network:
            self._reserve(vm_id)
        return self.status_vm(vm_id)

    def _reserve(self, vm_id: str) -> None:
        try:
            net.reserve(self.store, vm_id)
        except BaseException:
            self.store.delete_vm(vm_id)
            raise

    def start_vm(
        self,
        vm_id: str,
        *,
        on_phase: Phase | None = None,
        _resume: tuple[Path, str] | None = None,
        _inspect: tuple[Path, Path | None] | None = None,
    ) -> dict[str, Any]:
        """Boot the VM (or claim a standby one) and wait until its guest agent answers;
        `_resume` (state file, execution mode that wrote it): run a suspended VM instead (a
        cold boot, with the reason in boot_note, if it cannot). `_inspect` (a disk, an output
        image or None): boot as a helper VM of the disk tools."""
        row = vm_records.load(self.store, vm_id)
        if row["state"] == "started":
            raise WrongStateError(f"VM {vm_id} is already started")
        if time.time() >= row["expires_at"]:
            raise WrongStateError(f"VM {vm_id} has expired", hint="create a new VM")
        if row["network_enabled"] and row["net_slot"] is None:  # restarted: its slot went
            net.reserve(self.store, vm_id)
            row = vm_records.load(self.store, vm_id)
        installed = self.envs.ensure(row["environment"])
        choice = backends.choose(installed)
        if _inspect is not None:  # extra disks: no template's devices match
            note = "a helper VM of the disk tools: cold boot"
            self.boot.boot(row, installed, choice, None, note, helper=_inspect)
            return self.status_vm(vm_id)
        snapshot, note = self.boot.warm_snapshot(installed, choice, row, on_phase)
        if on_phase:
            on_phase(f"start execution_mode={choice.execution_mode}")
        if _resume is not None:
            state, mode = _resume
            if (
                mode == choice.execution_mode
                and make_backend(choice.name, choice.accel).can_suspend
            ):
                self.boot.boot(row, installed, choice, None, "", resume=state)
            else:
                why = f"the memory snapshot was made under {mode}, this start runs under "
                self.boot.boot(row, installed, choice, None, why + choice.execution_mode)
            return self.status_vm(vm_id)
        # A standby VM has its own disk; a workspace's VM must boot on the workspace's.
        if snapshot is None or not standby.enabled() or row["disk_path"]:
            self.boot.boot(row, installed, choice, snapshot, note)
        else:
            if not self.pool.adopt(row, choice):
                self.boot.boot(row, installed, choice, snapshot, note)
            self.pool.replenish(self.boot, row, installed, choice, snapshot)
        return self.status_vm(vm_id)

    def backend_for(self, environment: str) -> backends.BackendChoice:
        """The VMM that would run a VM of `environment` now (building it on first use)."""
        return backends.choose(self.envs.ensure(environment))

    def clear_standby(self) -> dict[str, Any]:
        """Stop every standby VM (they also end by themselves when idle)."""
        return self.pool.clear()

    def exec_in(
        self,
        vm_id: str,
        command: Command,
        *,
        timeout_seconds: float = 30,
        on_output: OutputCallback | None = None,
    ) -> tuple[dict[str, Any], ExecResult, int]:
        """Run `command` in a started VM; returns (record, result, wall ms)."""
        timeout = check_range("timeout_seconds", timeout_seconds)
        argv, shell, _ = command_parts(command)
        row = vm_records.load_started(self.store, vm_id)
        started = time.monotonic()
        with launch.connect(Path(row["vm_dir"])) as client:
            result = client.exec(argv, shell, timeout=timeout, on_output=on_output)
        return row, result, round((time.monotonic() - started) * 1000)

    def exec_vm(
        self,
        vm_id: str,
        *,
        command: Command,
        timeout_seconds: int = 30,
        on_output: OutputCallback | None = None,
    ) -> dict[str, Any]:
        """Run one command, then delete the VM (the contract's one-command VM)."""
        return one_shot.exec_then_delete(self, vm_id, command, timeout_seconds, on_output)

    def run_in_vm(
        self,
        *,
        environment: str,
        command: Command,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        timeout_seconds: int = 30,
        ttl_seconds: int = 600,
        network: bool = False,
        allow_host_compat: bool = False,
        on_output: OutputCallback | None = None,
        on_phase: Phase | None = None,
    ) -> dict[str, Any]:
        """A fresh VM, one command, and the VM gone afterwards, whatever happens."""
        resources = {
            "vcpu_count": vcpu_count,
            "mem_mib": mem_mib,
            "ttl_seconds": ttl_seconds,
            "network": network,
            "allow_host_compat": allow_host_compat,
        }
        return one_shot.run_in_fresh_vm(
            self,
            environment=environment,
            command=command,
            resources=resources,
            timeout_seconds=timeout_seconds,
            on_output=on_output,
            on_phase=on_phase,
        )

    def stop_vm(self, vm_id: str) -> dict[str, Any]:
        row = vm_records.load(self.store, vm_id)
        if row["state"] == "started":
            stop = "stopped: stop_vm"
            launch.stop_supervisor(Path(row["vm_dir"]), vm_records.supervisor_of(row), stop)
        row = vm_records.load(self.store, vm_id)
        if row["state"] == "created":
            stopped = {"state": "stopped", "stop_reason": "stopped: stop_vm", "net_slot": None}
            self.store.update_vm(vm_id, **stopped)
        return self.status_vm(vm_id)

    def delete_vm(self, vm_id: str, *, reason: str = "explicit_delete") -> dict[str, Any]:
        row = self.store.get_vm(vm_id)
        if row is None:
            raise NotFoundError(f"VM {vm_id!r} does not exist")
        if row["supervisor_pid"]:
            sup = vm_records.supervisor_of(row)
            launch.stop_supervisor(Path(row["vm_dir"]), sup, f"deleted: {reason}")
        self.store.delete_vm(vm_id)
        remove_vm_files(Path(row["vm_dir"]))
        return {"vm_id": vm_id, "deleted": True, "reason": reason}

    def status_vm(self, vm_id: str) -> dict[str, Any]:
        return vm_view(vm_records.load(self.store, vm_id))

    def list_vms(self) -> list[dict[str, Any]]:
        rows = [r for r in self.store.list_vms() if r["state"] not in standby.STANDBY_STATES]
        return [vm_view(self.reconcile(row)) for row in rows]

    def network_info_vm(self, vm_id: str) -> dict[str, Any]:
        return net.info(vm_records.load(self.store, vm_id))

    def set_allow_hosts(self, vm_id: str, allow_hosts: list[str]) -> dict[str, Any]:
        """Change a VM's allowlist: recorded, and applied at once if the VM runs."""
        row = vm_records.load(self.store, vm_id)
        self.store.update_vm(vm_id, allow_hosts=json.dumps(allow_hosts))
        if row["state"] == "started":
            with launch.connect(Path(row["vm_dir"])) as client:
                client.request("net.allow", {"allow_hosts": allow_hosts}, timeout=30.0)
        return self.network_info_vm(vm_id)

    def reap_expired(self) -> dict[str, Any]:
        now = time.time()
        expired = [r["vm_id"] for r in self.store.list_vms() if r["expires_at"] <= now]
        for vm_id in expired:
            with contextlib.suppress(NotFoundError):
                self.delete_vm(vm_id, reason="ttl_expired")
        return {"deleted_vm_ids": expired, "count": len(expired)}
