"""The jail: as root, the jailer runs Firecracker chrooted under an unprivileged uid/gid.

The VM's files are hard links in the chroot (`place`), Firecracker's paths are relative to it
and its sockets live there; files the jailed VMM writes are taken out with `claim`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import sys
from pathlib import Path

from pyro_mcp.errors import HostRequirementError, InvalidArgumentError, VmmError
from pyro_mcp.vmm.base import VmSpec
from pyro_mcp.vmm.firecracker.layout import API_SOCKET, ROOTFS_NAME, RW_NAME, GuestFiles

JAIL_DIR = "jail"
JAILER_UID_ENV = "PYRO_JAILER_UID"
JAILER_GID_ENV = "PYRO_JAILER_GID"
DEFAULT_JAIL_ID = 64000

_JAIL_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")  # what the jailer accepts as --id
_COPY_CHUNK = 1 << 20

# The jailed VMM's parent, run as `python -c`. The jailer switches to the unprivileged uid
# before exec'ing Firecracker, and a change of uid clears PR_SET_PDEATHSIG: the jailed VMM
# would outlive a killed supervisor. So this helper (which keeps spawn_vmm's death signal)
# opens a PID namespace whose init stays root and dies with the helper; when the init of a
# PID namespace dies the kernel kills everything in it, the jailed Firecracker included. The
# jailer's own --new-pid-ns cannot do this: its parent exits at once, breaking the chain. A
# namespace per VM also keeps VMs sharing the jail uid from seeing or signalling each other.
# SIGTERM or SIGKILL of the helper stops the VM; it exits with the VMM's code (128+n: signal n).
_PID_NAMESPACE_INIT = """\
import ctypes, os, select, sys
def code(status):
    n = os.waitstatus_to_exitcode(status)
    return n if n >= 0 else 128 - n
os.unshare(os.CLONE_NEWPID)
helper = os.pidfd_open(os.getpid())
init = os.fork()
if init == 0:
    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
    if select.select([helper], [], [], 0)[0]:
        os._exit(1)  # the helper died before the death signal was armed
    vmm = os.fork()
    if vmm == 0:
        os.execv(sys.argv[1], sys.argv[1:])
    os._exit(code(os.waitpid(vmm, 0)[1]))
sys.exit(code(os.waitpid(init, 0)[1]))
"""


def jail_id_from_env(variable: str) -> int:
    """The uid or gid named by `variable`, or the default; never root's."""
    raw = os.environ.get(variable)
    if not raw:
        return DEFAULT_JAIL_ID
    if not raw.isdigit() or not 0 < int(raw) < 2**32 - 1:
        raise InvalidArgumentError(
            f"{variable}={raw!r} is not an unprivileged numeric id",
            hint=f"give a number above 0, or unset {variable} to use {DEFAULT_JAIL_ID}",
        )
    return int(raw)


def jail_root(spec: VmSpec, binary: Path) -> Path:
    """The jailer's chroot: <base>/<exec file name>/<id>/root (it names it so itself)."""
    # The jailer canonicalises --exec-file, so a symlinked binary counts by its target.
    return spec.vm_dir / JAIL_DIR / binary.resolve().name / spec.vm_id / "root"


def jailer_command(jailer: Path, binary: Path, spec: VmSpec, uid: int, gid: int) -> list[str]:
    """The argv that runs `binary` jailed, in a PID namespace that dies with its parent."""
    return [
        sys.executable, "-I", "-S", "-c", _PID_NAMESPACE_INIT,
        str(jailer), "--id", spec.vm_id, "--exec-file", str(binary),
        "--uid", str(uid), "--gid", str(gid),
        "--chroot-base-dir", str(spec.vm_dir / JAIL_DIR),
        "--", "--api-sock", f"/{API_SOCKET}",
    ]  # fmt: skip


def jail_layout(spec: VmSpec, binary: Path, uid: int, gid: int) -> GuestFiles:
    """Rebuild the VM's chroot with its files in it; the VMM's ids own the writable disk."""
    if not _JAIL_ID_RE.fullmatch(spec.vm_id):
        raise InvalidArgumentError(
            f"VM id {spec.vm_id!r} cannot name a Firecracker jail",
            hint="use 1-64 letters, digits or dashes",
        )
    # A previous run's device nodes would make the jailer's mknod fail.
    shutil.rmtree(spec.vm_dir / JAIL_DIR, ignore_errors=True)
    root = jail_root(spec, binary)
    root.mkdir(parents=True)
    place(spec.kernel, root / "vmlinux", may_copy=True)
    place(spec.initramfs, root / "initrd", may_copy=True)
    place(spec.rootfs, root / ROOTFS_NAME, may_copy=False)
    rw = None
    if spec.rw_disk is not None:
        place(spec.rw_disk, root / RW_NAME, may_copy=False)
        os.chown(root / RW_NAME, uid, gid)  # the jailed VMM writes it
        rw = f"/{RW_NAME}"
    return GuestFiles("/vmlinux", "/initrd", f"/{ROOTFS_NAME}", rw)


def place(source: Path, target: Path, *, may_copy: bool) -> None:
    """Make `source` visible in the chroot: a hard link, or a copy for small read-only files."""
    try:
        os.link(source, target)
        return
    except OSError as exc:
        # A disk is too big to copy per VM, and a copy of a writable one would lose writes.
        if exc.errno != errno.EXDEV or not may_copy:
            why = "different file systems" if exc.errno == errno.EXDEV else exc.strerror
            raise HostRequirementError(
                f"cannot hard-link {source} into the Firecracker jail at {target}: {why}",
                hint="keep PYRO_CACHE_DIR and PYRO_STATE_DIR on one file system, "
                "or run pyro without root (Firecracker then runs without the jailer)",
            ) from exc
    shutil.copyfile(source, target)
    os.chmod(target, 0o444)


def claim(source: Path, target: Path, jail_uid: int) -> None:
    """Move a file the jailed VMM wrote out of its chroot, then make it ours and read-only.

    The chroot is writable by the jail's uid, so the name might have been swapped for a
    symbolic link, or a hard link to a file of someone else's: only a regular file with one
    link, owned by the jail's uid, is taken. The check looks where the jail cannot reach: at
    the renamed file, or at the open descriptor that a copy across file systems reads.
    """
    try:
        try:
            os.replace(source, target)  # a rename never follows a symbolic link
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _copy_out(source, target, jail_uid)
        else:
            if not _written_by(os.lstat(target), jail_uid):
                target.unlink()  # only the name: a link's target stays untouched
                raise _not_written_by_the_vmm(source)
        os.chown(target, os.geteuid(), os.getegid())
        os.chmod(target, 0o444)  # what the cache makes of it anyway; a jail's uid reads it
    except OSError as exc:
        raise VmmError(
            f"cannot move the snapshot file {source} to {target}: {exc.strerror or exc}"
        ) from exc


def _copy_out(source: Path, target: Path, jail_uid: int) -> None:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _not_written_by_the_vmm(source) from exc
        raise
    with os.fdopen(fd, "rb") as src:
        if not _written_by(os.fstat(fd), jail_uid):
            raise _not_written_by_the_vmm(source)
        with target.open("wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_CHUNK)
    source.unlink()


def _written_by(st: os.stat_result, jail_uid: int) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_uid == jail_uid and st.st_nlink == 1


def _not_written_by_the_vmm(source: Path) -> VmmError:
    return VmmError(
        f"{source} is not a file the jailed Firecracker wrote; no snapshot is made from it",
        hint="something in the jail replaced the snapshot file",
    )
