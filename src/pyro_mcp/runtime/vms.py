"""VM lifecycle with the public contract's parameters, defaults and result keys.

A VM record lives in the state store; a started VM is a supervisor process that owns the VMM.
Every call reconciles the record it touches: a started VM whose supervisor is gone is shown
as `stopped` with the reason.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyro_mcp import paths
from pyro_mcp.agent_client.client import ExecResult
from pyro_mcp.environments.service import EnvironmentService, InstalledEnvironment
from pyro_mcp.errors import InvalidArgumentError, NotFoundError, PyroError, WrongStateError
from pyro_mcp.host.process import ProcessRef
from pyro_mcp.runtime import backends, launch, standby
from pyro_mcp.runtime.snapshots import SnapshotCache, snapshot_key
from pyro_mcp.runtime.standby import StandbyPool
from pyro_mcp.state.store import StateStore
from pyro_mcp.supervisor.config import SupervisorConfig
from pyro_mcp.supervisor.main import make_backend, remove_vm_files
from pyro_mcp.vmm.base import Snapshot, VmSpec
from pyro_mcp.vmm.disks import clone_disk, make_disk

LIMITS = {
    "vcpu_count": (1, 8),
    "mem_mib": (256, 32768),
    "ttl_seconds": (60, 86400),
    "timeout_seconds": (1, 86400),
}
BOOT_TIMEOUT = {"tcg": 180.0, "kvm": 60.0}
WARM_ENV = "PYRO_WARM_START"
DISK_FILE = "disk.ext4"
OutputCallback = Callable[[str, bytes], None]
Command = str | Sequence[str]


def check_range(name: str, value: Any) -> int:
    low, high = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidArgumentError(
            f"{name} must be between {low} and {high}, got {value!r}",
            hint=f"pass {name}= within that range",
        )
    return int(value)


def command_parts(command: Command) -> tuple[list[str] | None, str | None, str]:
    """(argv, shell string, display text): a string runs through `sh -lc`, a list as is."""
    if isinstance(command, str):
        if not command.strip():
            raise InvalidArgumentError("command is empty", hint="pass the command to run")
        return None, command, command
    argv = list(command)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidArgumentError("command must be a non-empty string or list of strings")
    import shlex

    return argv, None, shlex.join(argv)


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
        self._deferred: tuple[Any, ...] | None = None

    # --- records ---------------------------------------------------------------------------

    def _view(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "vm_id": row["vm_id"],
            "environment": row["environment"],
            "environment_version": row["environment_version"],
            "vcpu_count": row["vcpu_count"],
            "mem_mib": row["mem_mib"],
            "ttl_seconds": row["ttl_seconds"],
            "created_at": row["created_at"],
            "expires_at": row["expires_at"],
            "state": row["state"],
            "network_enabled": bool(row["network_enabled"]),
            "allow_host_compat": False,
            "guest_ip": None,
            "tap_name": None,
            "execution_mode": row["execution_mode"],
            "stop_reason": row["stop_reason"],
            "metadata": vm_metadata(row),
        }

    def _row(self, vm_id: str) -> dict[str, Any]:
        row = self.store.get_vm(vm_id)
        if row is None:
            raise NotFoundError(f"VM {vm_id!r} does not exist", hint="`vm_id`s come from create_vm")
        return self.reconcile(row)

    def reconcile(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["state"] != "started":
            return row
        sup = ProcessRef(row["supervisor_pid"] or 0, row["supervisor_start"] or 0)
        if sup.alive():
            return row
        fresh = self.store.get_vm(row["vm_id"])  # the supervisor may have just recorded it
        if fresh is None or fresh["state"] != "started":
            return fresh or {**row, "state": "stopped"}
        reason = "supervisor_died: the VM's supervisor process is gone"
        self.store.update_vm(
            row["vm_id"],
            state="stopped",
            stop_reason=reason,
            stopped_at=time.time(),
            supervisor_pid=None,
        )
        remove_vm_files(Path(row["vm_dir"]))
        return {**row, "state": "stopped", "stop_reason": reason}

    # --- lifecycle ------------------------------------------------------------------------

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
    ) -> dict[str, Any]:
        """Record a VM (state `created`); nothing runs until start_vm.

        A workspace's VM keeps its disk at `_disk_path`, outside the VM's directory."""
        del allow_host_compat  # accepted for compatibility: commands never run on the host
        vcpu_count = check_range("vcpu_count", vcpu_count)
        mem_mib = check_range("mem_mib", mem_mib)
        ttl_seconds = check_range("ttl_seconds", ttl_seconds)
        if network:
            raise InvalidArgumentError(
                "guest networking is not available in this version",
                hint="pass network=False; VMs run with no network device",
            )
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
        }
        self.store.insert_vm(record)
        return self._view(self._row(vm_id))

    def start_vm(
        self,
        vm_id: str,
        *,
        on_phase: Callable[[str], None] | None = None,
        replenish: bool = True,
    ) -> dict[str, Any]:
        """Boot the VM (or claim a standby one) and wait until its guest agent answers."""
        row = self._row(vm_id)
        if row["state"] == "started":
            raise WrongStateError(f"VM {vm_id} is already started")
        if time.time() >= row["expires_at"]:
            raise WrongStateError(f"VM {vm_id} has expired", hint="create a new VM")
        installed = self.envs.ensure(row["environment"])
        choice = backends.choose(installed)
        snapshot, note = self._warm_snapshot(installed, choice, row, on_phase)
        if on_phase:
            on_phase(f"start execution_mode={choice.execution_mode}")
        # A standby VM has its own disk; a workspace's VM must boot on the workspace's.
        pooled = snapshot is not None and standby.enabled() and not row["disk_path"]
        if not (pooled and self._adopt_standby(row, choice)):
            self._boot(row, installed, choice, snapshot, note)
        if pooled and snapshot is not None:
            if replenish:
                self._replenish(row, installed, choice, snapshot)
            else:
                self._deferred = (row, installed, choice, snapshot)
        return self._view(self._row(vm_id))

    def replenish_deferred(self) -> None:
        """Start the standby replacement a one-shot run held back while it ran."""
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self._replenish(*deferred)

    def _supervisor_config(
        self,
        row: dict[str, Any],
        installed: InstalledEnvironment,
        choice: backends.BackendChoice,
        snapshot: Snapshot | None,
        *,
        standby_vm: bool = False,
    ) -> SupervisorConfig:
        vm_id = row["vm_id"]
        vm_dir = paths.ensure_private_dir(Path(row["vm_dir"]))
        spec = VmSpec(
            vm_id,
            vm_dir,
            installed.kernel,
            installed.initramfs,
            installed.rootfs,
            row["vcpu_count"],
            row["mem_mib"],
            f"pyro-{vm_id[:8]}",
            rw_disk=self._writable_disk(row, snapshot),
        )
        owner = row.get("owner_pid")
        return SupervisorConfig(
            spec,
            choice.name,
            choice.accel,
            self.store.root,
            row["expires_at"],
            BOOT_TIMEOUT[choice.accel],
            owner,
            row.get("owner_start"),
            delete_on_exit=owner is not None or standby_vm,
            snapshot_memory=str(snapshot.memory) if snapshot else None,
            snapshot_state=str(snapshot.state) if snapshot else None,
            standby=standby_vm,
            workspace_id=row.get("workspace_id"),
        )

    @staticmethod
    def _writable_disk(row: dict[str, Any], snapshot: Snapshot | None) -> Path | None:
        """The VM's own disk: a sparse copy of the snapshot's, or a new one for a cold boot."""
        if not row["disk_mib"]:
            return None
        disk = disk_file(row)
        if disk.exists():  # already made for this start (a standby claimed it, for one)
            return disk
        if snapshot is not None and snapshot.disk is not None:
            clone_disk(snapshot.disk, disk)
        else:
            make_disk(disk, int(row["disk_mib"]))
        return disk

    def _boot(
        self,
        row: dict[str, Any],
        installed: InstalledEnvironment,
        choice: backends.BackendChoice,
        snapshot: Snapshot | None,
        note: str,
    ) -> None:
        config = self._supervisor_config(row, installed, choice, snapshot)
        sup, ready_fd = launch.spawn_supervisor(config)
        self.store.update_vm(
            row["vm_id"],
            state="started",
            backend=choice.name,
            started_at=time.time(),
            execution_mode=choice.execution_mode,
            supervisor_pid=sup.pid,
            supervisor_start=sup.start,
            stop_reason=None,
        )
        try:
            report = launch.wait_ready(ready_fd, sup, config.boot_timeout + 30)
        except BaseException:
            launch.stop_supervisor(config.spec.vm_dir, sup, "boot_interrupted")
            raise
        agent = report.get("agent", {})
        mode = str(agent.get("boot_mode", "cold"))
        # Without a snapshot the supervisor only knows it got none; this side knows why.
        said = str(agent.get("boot_note") or "")
        if snapshot is not None and mode == "cold":
            self.snapshots.discard(snapshot)  # it verified but did not restore: remake it
        self.store.update_vm(
            row["vm_id"], boot_mode=mode, boot_note=(note or said) if snapshot is None else said
        )

    def _adopt_standby(self, row: dict[str, Any], choice: backends.BackendChoice) -> bool:
        """Give this VM's identity to a ready standby VM; False when none could be had."""
        claimed = self.pool.claim(row, choice.execution_mode)
        if claimed is None:
            return False
        vm_id = row["vm_id"]
        try:
            with launch.connect(Path(claimed["vm_dir"]), timeout=2.0) as client:
                claim = {
                    "vm_id": vm_id,
                    "expires_at": row["expires_at"],
                    "owner_pid": row["owner_pid"],
                    "owner_start": row["owner_start"],
                    "delete_on_exit": row["owner_pid"] is not None,
                }
                client.request("vm.claim", claim, timeout=5.0)
                client.configure(
                    hostname=f"pyro-{vm_id[:8]}",
                    machine_id=uuid.uuid4().hex,
                    time_ns=time.time_ns(),
                    entropy=os.urandom(64),
                )
        except PyroError:
            sup = ProcessRef(claimed["supervisor_pid"] or 0, claimed["supervisor_start"] or 0)
            launch.stop_supervisor(Path(claimed["vm_dir"]), sup, "standby claim failed")
            self.store.delete_vm(claimed["vm_id"])
            return False
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM vms WHERE vm_id = ?", (claimed["vm_id"],))
            conn.execute(
                "UPDATE vms SET state = 'started', backend = ?, execution_mode = ?, vm_dir = ?, "
                "supervisor_pid = ?, supervisor_start = ?, started_at = ?, stop_reason = NULL, "
                "boot_mode = 'standby', boot_note = '' WHERE vm_id = ?",
                (claimed["backend"], claimed["execution_mode"], claimed["vm_dir"],
                 claimed["supervisor_pid"], claimed["supervisor_start"], time.time(), vm_id),
            )  # fmt: skip
        return True

    def _replenish(
        self,
        row: dict[str, Any],
        installed: InstalledEnvironment,
        choice: backends.BackendChoice,
        snapshot: Snapshot,
    ) -> None:
        """Start a standby VM of this kind in the background unless one exists."""
        mode = choice.execution_mode
        self.pool.forget_dead()
        if not self.pool.wanted(row, mode):
            return
        record = self.pool.new_record(row, mode)
        record["backend"] = choice.name
        config = self._supervisor_config(record, installed, choice, snapshot, standby_vm=True)
        sup, ready_fd = launch.spawn_supervisor(config)
        os.close(ready_fd)  # nobody waits: the supervisor records itself as ready
        self.store.update_vm(
            record["vm_id"],
            backend=choice.name,
            supervisor_pid=sup.pid,
            supervisor_start=sup.start,
        )

    def clear_standby(self) -> dict[str, Any]:
        """Stop every standby VM (they also end by themselves when idle)."""
        stopped = []
        for row in self.pool.standby_rows():
            sup = ProcessRef(row["supervisor_pid"] or 0, row["supervisor_start"] or 0)
            launch.stop_supervisor(Path(row["vm_dir"]), sup, "standby cleared")
            self.store.delete_vm(row["vm_id"])
            remove_vm_files(Path(row["vm_dir"]))
            stopped.append(row["vm_id"])
        return {"stopped_vm_ids": stopped, "count": len(stopped)}

    def _warm_snapshot(
        self,
        installed: InstalledEnvironment,
        choice: backends.BackendChoice,
        row: dict[str, Any],
        on_phase: Callable[[str], None] | None,
    ) -> tuple[Snapshot | None, str]:
        """The warm-start snapshot for this VM, made on first need; None means cold boot."""
        if os.environ.get(WARM_ENV, "1") == "0":
            return None, f"warm start is off ({WARM_ENV}=0)"
        if row["disk_mib"] and disk_file(row).exists():
            # The template's memory describes the template's disk, not this one's data.
            return None, "the VM's disk already holds data: cold boot"
        key = snapshot_key(installed, choice, row["vcpu_count"], row["mem_mib"], row["disk_mib"])
        try:
            found = self.snapshots.lookup(key)
            if found is None and on_phase:
                on_phase("snapshot (first use of this environment and size: cold boot once)")
            backend = make_backend(choice.name, choice.accel)
            return self.snapshots.ensure(key, installed, backend, self.store.root / "vms"), ""
        except PyroError as exc:
            return None, f"no snapshot, cold boot: {exc}"

    def _started_row(self, vm_id: str) -> dict[str, Any]:
        row = self._row(vm_id)
        if row["state"] != "started":
            why = f" ({row['stop_reason']})" if row["stop_reason"] else ""
            raise WrongStateError(f"VM {vm_id} is {row['state']}{why}", hint="call start_vm first")
        return row

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
        row = self._started_row(vm_id)
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
        # A request refused before anything runs (bad arguments, a VM that is not started)
        # leaves the VM as it is; once the command is on its way, the VM goes whatever happens.
        check_range("timeout_seconds", timeout_seconds)
        command_parts(command)
        self._started_row(vm_id)
        try:
            row, result, wall = self.exec_in(
                vm_id, command, timeout_seconds=timeout_seconds, on_output=on_output
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.delete_vm(vm_id, reason="run_vm_error_cleanup")
            raise
        cleanup = self.delete_vm(vm_id, reason="post_exec_cleanup")
        return exec_view(row, command, result, wall, cleanup)

    def stop_vm(self, vm_id: str) -> dict[str, Any]:
        row = self._row(vm_id)
        if row["state"] == "started":
            sup = ProcessRef(row["supervisor_pid"], row["supervisor_start"])
            launch.stop_supervisor(Path(row["vm_dir"]), sup, "stopped: stop_vm")
        row = self._row(vm_id)
        if row["state"] == "created":
            self.store.update_vm(vm_id, state="stopped", stop_reason="stopped: stop_vm")
        return self._view(self._row(vm_id))

    def delete_vm(self, vm_id: str, *, reason: str = "explicit_delete") -> dict[str, Any]:
        row = self.store.get_vm(vm_id)
        if row is None:
            raise NotFoundError(f"VM {vm_id!r} does not exist")
        if row["supervisor_pid"]:
            sup = ProcessRef(row["supervisor_pid"], row["supervisor_start"] or 0)
            launch.stop_supervisor(Path(row["vm_dir"]), sup, f"deleted: {reason}")
        self.store.delete_vm(vm_id)
        remove_vm_files(Path(row["vm_dir"]))
        return {"vm_id": vm_id, "deleted": True, "reason": reason}

    def status_vm(self, vm_id: str) -> dict[str, Any]:
        return self._view(self._row(vm_id))

    def list_vms(self) -> list[dict[str, Any]]:
        rows = [r for r in self.store.list_vms() if r["state"] not in standby.STANDBY_STATES]
        return [self._view(self.reconcile(row)) for row in rows]

    def network_info_vm(self, vm_id: str) -> dict[str, Any]:
        self._row(vm_id)
        return {
            "vm_id": vm_id,
            "network_enabled": False,
            "outbound_connectivity_expected": False,
            "reason": "this VM has no network device (guest networking is off)",
        }

    def reap_expired(self) -> dict[str, Any]:
        now = time.time()
        expired = [r["vm_id"] for r in self.store.list_vms() if r["expires_at"] <= now]
        for vm_id in expired:
            with contextlib.suppress(NotFoundError):
                self.delete_vm(vm_id, reason="ttl_expired")
        return {"deleted_vm_ids": expired, "count": len(expired)}

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
        on_phase: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """A fresh VM, one command, and the VM gone afterwards, whatever happens."""
        check_range("timeout_seconds", timeout_seconds)
        command_parts(command)
        if on_phase:
            on_phase(f"create environment={environment}")
        vm = self.create_vm(
            environment=environment,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            ttl_seconds=ttl_seconds,
            network=network,
            allow_host_compat=allow_host_compat,
            _owner=ProcessRef.me(),
        )
        try:
            self.start_vm(vm["vm_id"], on_phase=on_phase)
            if on_phase:
                on_phase("execute")
            return self.exec_vm(
                vm["vm_id"], command=command, timeout_seconds=timeout_seconds, on_output=on_output
            )
        except BaseException:
            with contextlib.suppress(Exception):  # NotFoundError: exec_vm already deleted it
                self.delete_vm(vm["vm_id"], reason="run_vm_error_cleanup")
            raise


def vm_metadata(row: dict[str, Any]) -> dict[str, str]:
    """How a VM runs: its backend, and whether it restored, came from standby or cold-booted
    (and why); a VM, or the workspace it serves, reports this as `metadata`."""
    return {
        "backend": row["backend"] or "pending",
        "boot_mode": row["boot_mode"] or "pending",
        "boot_note": row["boot_note"] or "",
    }


def disk_file(row: dict[str, Any]) -> Path:
    """Where a VM's writable disk lives: its own directory, or the workspace's it serves."""
    return Path(row["disk_path"]) if row.get("disk_path") else Path(row["vm_dir"]) / DISK_FILE


def exec_fields(result: ExecResult, wall_ms: int) -> dict[str, Any]:
    """What every exec result says about the command's run, one-shot VM or workspace."""
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "duration_ms": wall_ms,
        "guest_duration_ms": result.duration_ms,
    }


def exec_view(
    row: dict[str, Any], command: Command, result: ExecResult, wall_ms: int, cleanup: dict[str, Any]
) -> dict[str, Any]:
    return {
        "vm_id": row["vm_id"],
        "environment": row["environment"],
        "environment_version": row["environment_version"],
        "command": command_parts(command)[2],
        **exec_fields(result, wall_ms),
        "execution_mode": row["execution_mode"],
        "cleanup": cleanup,
    }
