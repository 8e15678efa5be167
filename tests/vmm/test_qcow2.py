"""qcow2 workspace disks with real qemu-img: made from a raw disk with the template snapshot,
named snapshots taken, reverted to and deleted, copy-on-write (no VM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyro_mcp.errors import VmmError
from pyro_mcp.host import tools
from pyro_mcp.vmm import qcow2
from pyro_mcp.vmm.disks import make_disk

pytestmark = pytest.mark.skipif(
    tools.QEMU_IMG.path() is None, reason=f"no qemu-img: {tools.QEMU_IMG.install_hint}"
)


def test_snapshots_are_taken_reverted_and_deleted(tmp_path: Path) -> None:
    raw, image = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    make_disk(raw, 256)
    qcow2.from_raw(raw, image)
    assert qcow2.names(image) == [qcow2.TEMPLATE]
    assert image.stat().st_mode & 0o777 == 0o600
    qcow2.snapshot(image, "s1")
    qcow2.snapshot(image, "s2")
    assert qcow2.names(image) == [qcow2.TEMPLATE, "s1", "s2"]
    qcow2.revert(image, "s1")
    qcow2.delete(image, "s2")
    assert qcow2.names(image) == [qcow2.TEMPLATE, "s1"]
    with pytest.raises(VmmError, match="qemu-img snapshot failed"):
        qcow2.revert(image, "s2")
    # copy-on-write: the image is the raw disk's allocated data, not its size
    assert qcow2.info(image)["actual-size"] < 64 << 20


def test_a_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(VmmError, match="qemu-img convert failed"):
        qcow2.from_raw(tmp_path / "missing.raw", tmp_path / "disk.qcow2")
    assert list(tmp_path.iterdir()) == []
