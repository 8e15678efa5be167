"""What a boot is given, without booting: the VM's writable disk, whether a warm-start
snapshot is sought, and the supervisor's config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp import paths
from pyro_mcp.environments import catalog
from pyro_mcp.environments.service import InstalledEnvironment
from pyro_mcp.runtime import vm_boot
from pyro_mcp.runtime.backends import BackendChoice
from pyro_mcp.runtime.snapshots import SnapshotCache
from pyro_mcp.runtime.vm_boot import VmBoot
from pyro_mcp.state.store import StateStore
from pyro_mcp.vmm.base import Snapshot

TCG = BackendChoice("qemu", "tcg", "forced")
EXT4_MAGIC = b"\x53\xef"  # at byte 1080 of an ext4 image


@pytest.fixture
def boot(tmp_path: Path) -> VmBoot:
    return VmBoot(StateStore(tmp_path / "state"), SnapshotCache(tmp_path / "snapshots"))


def vm_row(boot: VmBoot, **fields: Any) -> dict[str, Any]:
    vm_dir = paths.ensure_private_dir(boot.store.vm_dir("abcdef123456"))
    return {
        "vm_id": "abcdef123456",
        "vm_dir": str(vm_dir),
        "vcpu_count": 2,
        "mem_mib": 512,
        "disk_mib": 0,
        "disk_path": None,
        "expires_at": time.time() + 600,
        "owner_pid": None,
        "owner_start": None,
        **fields,
    }


def installed(tmp_path: Path) -> InstalledEnvironment:
    return InstalledEnvironment(
        catalog.get("debian:12"), {}, tmp_path / "vmlinux", tmp_path / "initrd", tmp_path / "rootfs"
    )


def test_a_vms_disk_is_its_own_unless_it_serves_a_workspace(boot: VmBoot, tmp_path: Path) -> None:
    own = vm_row(boot)
    assert vm_boot.disk_file(own) == Path(own["vm_dir"]) / vm_boot.DISK_FILE
    workspace_disk = tmp_path / "ws" / "disk.ext4"
    assert vm_boot.disk_file(vm_row(boot, disk_path=str(workspace_disk))) == workspace_disk


def test_no_disk_without_disk_mib(boot: VmBoot) -> None:
    assert vm_boot.writable_disk(vm_row(boot), None) is None


def test_a_cold_boot_gets_a_new_ext4_disk_and_a_warm_one_a_copy_of_the_snapshots(
    boot: VmBoot, tmp_path: Path
) -> None:
    cold = vm_boot.writable_disk(vm_row(boot, disk_mib=16), None)
    assert cold is not None and cold.stat().st_size == 16 << 20
    with cold.open("rb") as image:
        image.seek(1080)
        assert image.read(2) == EXT4_MAGIC
    template = tmp_path / "template.ext4"
    template.write_bytes(b"template disk")
    snapshot = Snapshot(tmp_path / "mem", tmp_path / "state", disk=template)
    cold.unlink()
    warm = vm_boot.writable_disk(vm_row(boot, disk_mib=16), snapshot)
    assert warm == cold and warm.read_bytes() == b"template disk"


def test_a_disk_already_made_for_this_start_is_kept(boot: VmBoot, tmp_path: Path) -> None:
    disk = tmp_path / "ws" / "disk.ext4"
    disk.parent.mkdir()
    disk.write_bytes(b"the workspace's data")
    row = vm_row(boot, disk_mib=16, disk_path=str(disk))
    assert vm_boot.writable_disk(row, None) == disk
    assert disk.read_bytes() == b"the workspace's data"


def test_no_snapshot_is_sought_when_warm_start_is_off_or_the_disk_holds_data(
    boot: VmBoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = installed(tmp_path)
    monkeypatch.setenv(vm_boot.WARM_ENV, "0")
    assert boot.warm_snapshot(env, TCG, vm_row(boot), None) == (
        None,
        "warm start is off (PYRO_WARM_START=0)",
    )
    monkeypatch.delenv(vm_boot.WARM_ENV)
    disk = tmp_path / "data.ext4"
    disk.write_bytes(b"data")
    row = vm_row(boot, disk_mib=16, disk_path=str(disk))
    snapshot, note = boot.warm_snapshot(env, TCG, row, None)
    assert snapshot is None and "already holds data" in note
    assert not any(boot.snapshots.root.glob("*"))  # nothing was looked up or made


def test_the_config_tells_the_supervisor_its_vm_ttl_owner_and_fate(
    boot: VmBoot, tmp_path: Path
) -> None:
    env = installed(tmp_path)
    plain = boot.config(vm_row(boot), env, TCG, None)
    assert (plain.spec.vm_id, plain.spec.vcpu_count, plain.spec.mem_mib) == ("abcdef123456", 2, 512)
    assert plain.spec.hostname == "pyro-abcdef12" and plain.spec.rw_disk is None
    assert (plain.backend, plain.accel, plain.boot_timeout) == ("qemu", "tcg", 180.0)
    assert plain.state_root == boot.store.root
    assert not plain.delete_on_exit and not plain.standby and plain.snapshot_memory is None
    owned = boot.config(vm_row(boot, owner_pid=42, owner_start=7), env, TCG, None)
    assert (owned.owner_pid, owned.owner_start, owned.delete_on_exit) == (42, 7, True)
    snapshot = Snapshot(tmp_path / "mem", tmp_path / "state")
    spare = boot.config(vm_row(boot), env, TCG, snapshot, standby_vm=True)
    assert spare.standby and spare.delete_on_exit
    assert spare.snapshot_memory == str(snapshot.memory)
    assert spare.snapshot_state == str(snapshot.state)
