"""The VM's files and sockets as Firecracker names them, for a VMM that runs without the jail.

Firecracker's relative paths resolve against its working directory: the VM directory, or the
jail's root (see `jail`, which lays out its own chroot under the same names).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyro_mcp.vmm.base import VmSpec

API_SOCKET = "api.sock"
VSOCK_SOCKET = "vsock.sock"
ROOTFS_NAME = "rootfs"  # the disks' names in the jail, or beside a template or restored VM
RW_NAME = "rw"


@dataclass(frozen=True)
class GuestFiles:
    """The VM's files as Firecracker sees them: host paths, or paths inside its chroot."""

    kernel: str
    initrd: str
    rootfs: str
    rw_disk: str | None


def plain_layout(spec: VmSpec, *, portable: bool) -> GuestFiles:
    """Clear the sockets an earlier run left in the VM directory and name the VM's files.

    `portable` names the disks relative to Firecracker's working directory. A snapshot
    stores the drive paths and a restore reopens them, so only such names let every
    VM restored from one snapshot find its own disks.
    """
    # Firecracker will not bind a socket path that already exists.
    for name in (API_SOCKET, VSOCK_SOCKET):
        (spec.vm_dir / name).unlink(missing_ok=True)
    if not portable:
        rw = str(spec.rw_disk) if spec.rw_disk is not None else None
        return GuestFiles(str(spec.kernel), str(spec.initramfs), str(spec.rootfs), rw)
    # Symbolic links: without a chroot they resolve anywhere, across file systems too.
    for name, source in ((ROOTFS_NAME, spec.rootfs), (RW_NAME, spec.rw_disk)):
        (spec.vm_dir / name).unlink(missing_ok=True)
        if source is not None:
            (spec.vm_dir / name).symlink_to(source.absolute())
    rw = RW_NAME if spec.rw_disk is not None else None
    # The kernel and initrd are read at boot only: a restore never opens them.
    return GuestFiles(str(spec.kernel), str(spec.initramfs), ROOTFS_NAME, rw)
