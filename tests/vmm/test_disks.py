"""Per-VM writable disks: a new sparse ext4 image, and a sparse copy of a snapshot's disk."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pyro_mcp.environments.blobs import sha256_file
from pyro_mcp.errors import VmmError
from pyro_mcp.vmm.disks import clone_disk, make_disk

MIB = 1 << 20
EXT_MAGIC_OFFSET = 1024 + 0x38  # the superblock starts at 1024; s_magic is 0xEF53
LABEL_OFFSET = 1024 + 0x78  # s_volume_name, 16 bytes

needs_mke2fs = pytest.mark.skipif(
    shutil.which("mke2fs", path="/usr/sbin:/sbin:/usr/bin:/bin") is None,
    reason="mke2fs is missing: apt-get install -y e2fsprogs",
)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def superblock(path: Path) -> tuple[bytes, bytes]:
    with path.open("rb") as handle:
        handle.seek(EXT_MAGIC_OFFSET)
        magic = handle.read(2)
        handle.seek(LABEL_OFFSET)
        label = handle.read(16).rstrip(b"\0")
    return magic, label


def debugfs(image: Path, request: str) -> str:
    tool = shutil.which("debugfs", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if tool is None:
        pytest.skip("debugfs is missing: apt-get install -y e2fsprogs")
    done = subprocess.run(
        [tool, "-R", request, str(image)], capture_output=True, text=True, check=True
    )
    return done.stdout


@needs_mke2fs
@pytest.mark.parametrize("size_mib", [64, 8192])
def test_make_disk_writes_a_sparse_ext4_image_of_the_size(tmp_path: Path, size_mib: int) -> None:
    disk = tmp_path / "disk.ext4"
    make_disk(disk, size_mib)
    assert disk.stat().st_size == size_mib * MIB
    assert superblock(disk) == (b"\x53\xef", b"pyro-rw")
    # Lazy init: a few megabytes on the host whatever the size (8 GiB included).
    assert allocated(disk) < 64 * MIB
    assert allocated(disk) * 8 < disk.stat().st_size
    assert "lost+found" in debugfs(disk, "ls -l /")


@needs_mke2fs
def test_make_disk_replaces_whatever_was_at_the_path(tmp_path: Path) -> None:
    disk = tmp_path / "disk.ext4"
    disk.write_bytes(os.urandom(3 * MIB))
    make_disk(disk, 32)
    assert disk.stat().st_size == 32 * MIB
    assert superblock(disk)[0] == b"\x53\xef"


@needs_mke2fs
def test_make_disk_failing_raises_and_leaves_no_file(tmp_path: Path) -> None:
    disk = tmp_path / "disk.ext4"
    with pytest.raises(VmmError, match="cannot create the VM's disk"):
        make_disk(disk, 0)  # mke2fs refuses an empty device
    assert not disk.exists()


def test_make_disk_in_a_missing_directory_raises_a_vmm_error(tmp_path: Path) -> None:
    disk = tmp_path / "no" / "such" / "dir" / "disk.ext4"
    with pytest.raises(VmmError, match="cannot create the VM's disk"):
        make_disk(disk, 16)
    assert not disk.parent.exists()


@needs_mke2fs
def test_clone_disk_copies_the_bytes_but_not_the_holes(tmp_path: Path) -> None:
    source = tmp_path / "snapshot-disk"
    make_disk(source, 256)
    with source.open("r+b") as handle:  # data far into the image, as a template leaves it
        handle.seek(200 * MIB)
        handle.write(b"written by the template")
    os.chmod(source, 0o444)  # as in the blob store
    before = sha256_file(source)
    target = tmp_path / "vm" / "disk.ext4"
    target.parent.mkdir()
    clone_disk(source, target)
    assert target.stat().st_size == source.stat().st_size == 256 * MIB
    assert sha256_file(target) == before == sha256_file(source)
    assert allocated(target) <= allocated(source) + MIB
    assert allocated(target) * 16 < target.stat().st_size
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # the VM's own, writable
    assert stat.S_IMODE(source.stat().st_mode) == 0o444

    with target.open("r+b") as handle:  # writing the copy leaves the snapshot's disk alone
        handle.seek(200 * MIB)
        handle.write(b"written by the VM!!!!!!")
    assert sha256_file(source) == before


def test_clone_disk_of_a_missing_source_raises_and_leaves_no_target(tmp_path: Path) -> None:
    target = tmp_path / "disk.ext4"
    with pytest.raises(VmmError, match="cannot copy the snapshot's disk"):
        clone_disk(tmp_path / "missing", target)
    assert not target.exists()


def test_clone_disk_into_a_missing_directory_raises(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"x")
    with pytest.raises(VmmError, match="cannot copy the snapshot's disk"):
        clone_disk(source, tmp_path / "no" / "dir" / "disk.ext4")
