"""Booting a VM record: its supervisor's config, its writable disk, and the boot itself,
restored from the warm-start snapshot when one can be had, cold otherwise."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyro_mcp import paths
from pyro_mcp.environments.service import InstalledEnvironment
from pyro_mcp.errors import PyroError
from pyro_mcp.runtime import launch
from pyro_mcp.runtime.backends import BackendChoice
from pyro_mcp.runtime.network import plan_of
from pyro_mcp.runtime.snapshots import SnapshotCache, snapshot_key
from pyro_mcp.state.store import StateStore
from pyro_mcp.supervisor.config import SupervisorConfig
from pyro_mcp.supervisor.main import make_backend
from pyro_mcp.vmm import qcow2
from pyro_mcp.vmm.base import Snapshot, VmSpec
from pyro_mcp.vmm.disks import clone_disk, make_disk

BOOT_TIMEOUT = {"tcg": 180.0, "kvm": 60.0}
WARM_ENV = "PYRO_WARM_START"
DISK_FILE = "disk.ext4"


def disk_file(row: dict[str, Any]) -> Path:
    """Where a VM's writable disk lives: its own directory, or the workspace's it serves."""
    return Path(row["disk_path"]) if row.get("disk_path") else Path(row["vm_dir"]) / DISK_FILE


def writable_disk(row: dict[str, Any], snapshot: Snapshot | None) -> Path | None:
    """The VM's own disk: a sparse copy of the snapshot's, or a new one for a cold boot; a
    qcow2 image (for snapshots of its own) when its path says so."""
    if not row["disk_mib"]:
        return None
    disk = disk_file(row)
    if disk.exists():  # already made for this start (a standby claimed it, for one)
        return disk
    if disk.suffix == qcow2.SUFFIX:
        _make_qcow2(disk, snapshot, int(row["disk_mib"]))
    elif snapshot is not None and snapshot.disk is not None:
        clone_disk(snapshot.disk, disk)
    else:
        make_disk(disk, int(row["disk_mib"]))
    return disk


def _inspected(disk: Path, vm_dir: Path) -> Path:
    """What a helper VM gets of another VM's disk: a throwaway overlay in its own directory,
    so its kernel may replay the file system's journal while the disk itself is only read."""
    image = vm_dir / "inspect.qcow2"
    image.unlink(missing_ok=True)
    qcow2.overlay(disk, image)
    return image


def _make_qcow2(disk: Path, snapshot: Snapshot | None, size_mib: int) -> None:
    if snapshot is not None and snapshot.disk is not None:
        qcow2.from_raw(snapshot.disk, disk)
        return
    raw = disk.with_suffix(".raw")
    try:
        make_disk(raw, size_mib)
        qcow2.from_raw(raw, disk)
    finally:
        raw.unlink(missing_ok=True)


class VmBoot:
    def __init__(self, store: StateStore, snapshots: SnapshotCache) -> None:
        self.store = store
        self.snapshots = snapshots

    def warm_snapshot(
        self,
        installed: InstalledEnvironment,
        choice: BackendChoice,
        row: dict[str, Any],
        on_phase: Callable[[str], None] | None,
    ) -> tuple[Snapshot | None, str]:
        """The warm-start snapshot for this VM, made on first need; None means cold boot."""
        if os.environ.get(WARM_ENV, "1") == "0":
            return None, f"warm start is off ({WARM_ENV}=0)"
        if row["disk_mib"] and disk_file(row).exists():
            # The template's memory describes the template's disk, not this one's data.
            return None, "the VM's disk already holds data: cold boot"
        key = snapshot_key(
            installed, choice, row["vcpu_count"], row["mem_mib"], row["disk_mib"],
            network=bool(row["network_enabled"]),
        )  # fmt: skip
        try:
            found = self.snapshots.lookup(key)
            if found is None and on_phase:
                on_phase("snapshot (first use of this environment and size: cold boot once)")
            backend = make_backend(choice.name, choice.accel)
            return self.snapshots.ensure(key, installed, backend, self.store.root / "vms"), ""
        except PyroError as exc:
            return None, f"no snapshot, cold boot: {exc}"

    def boot(
        self,
        row: dict[str, Any],
        installed: InstalledEnvironment,
        choice: BackendChoice,
        snapshot: Snapshot | None,
        note: str,
        *,
        resume: Path | None = None,
        helper: tuple[Path, Path | None] | None = None,
    ) -> None:
        """Start the VM's supervisor and wait until its guest answers; `note` says why there
        is no snapshot, if there is none. With `resume`, run that suspended VM's state."""
        config = self.config(row, installed, choice, snapshot, resume=resume, helper=helper)
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

    def spawn_standby(
        self,
        record: dict[str, Any],
        installed: InstalledEnvironment,
        choice: BackendChoice,
        snapshot: Snapshot,
    ) -> None:
        """Start a standby VM's supervisor in the background; it records itself as ready."""
        config = self.config(record, installed, choice, snapshot, standby_vm=True)
        sup, ready_fd = launch.spawn_supervisor(config)
        os.close(ready_fd)  # nobody waits for it
        self.store.update_vm(
            record["vm_id"],
            backend=choice.name,
            supervisor_pid=sup.pid,
            supervisor_start=sup.start,
        )

    def config(
        self,
        row: dict[str, Any],
        installed: InstalledEnvironment,
        choice: BackendChoice,
        snapshot: Snapshot | None,
        *,
        standby_vm: bool = False,
        resume: Path | None = None,
        helper: tuple[Path, Path | None] | None = None,
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
            rw_disk=writable_disk(row, snapshot),
            inspect_disk=_inspected(helper[0], vm_dir) if helper else None,
            output_disk=helper[1] if helper else None,
        )
        owner = row.get("owner_pid")
        plan = plan_of(row)
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
            network=plan.to_json() if plan else None,
            resume_state=str(resume) if resume else None,
        )
