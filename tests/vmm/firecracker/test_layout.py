"""The VM's files as an unjailed Firecracker names them: host paths, or portable links."""

from __future__ import annotations

from pathlib import Path

from framework.firecracker_harness import make_spec
from pyro_mcp.vmm.firecracker.layout import GuestFiles, plain_layout


def test_a_plain_launch_keeps_host_paths(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, rw=True)
    files = plain_layout(spec, portable=False)
    rw = str(spec.rw_disk)
    assert files == GuestFiles(str(spec.kernel), str(spec.initramfs), str(spec.rootfs), rw)
    assert not (spec.vm_dir / "rootfs").exists()


def test_portable_layout_replaces_stale_links(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, rw=False)
    (spec.vm_dir / "rootfs").symlink_to(tmp_path / "elsewhere")
    (spec.vm_dir / "rw").symlink_to(tmp_path / "old-rw")
    files = plain_layout(spec, portable=True)
    assert (files.rootfs, files.rw_disk) == ("rootfs", None)
    assert (spec.vm_dir / "rootfs").resolve() == spec.rootfs
    assert not (spec.vm_dir / "rw").exists() and not (spec.vm_dir / "rw").is_symlink()


def test_a_stale_socket_is_cleared(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, rw=False)
    for name in ("api.sock", "vsock.sock"):
        (spec.vm_dir / name).write_text("left by an earlier run")
    plain_layout(spec, portable=False)
    assert not (spec.vm_dir / "api.sock").exists() and not (spec.vm_dir / "vsock.sock").exists()
