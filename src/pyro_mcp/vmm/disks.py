"""Per-VM writable disks: sparse ext4 images, created or cloned in time independent of size."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from pyro_mcp.errors import VmmError

DEFAULT_DISK_MIB = 8192


def make_disk(path: Path, size_mib: int) -> None:
    """A new, empty ext4 image; lazy init keeps it a few megabytes on the host."""
    try:
        with path.open("wb") as handle:
            handle.truncate(size_mib << 20)
    except OSError as exc:  # a missing directory, a full or read-only file system
        with contextlib.suppress(OSError):
            path.unlink()
        raise VmmError(f"cannot create the VM's disk {path}: {exc.strerror or exc}") from exc
    proc = subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-m", "0", "-L", "pyro-rw",
         "-E", "lazy_itable_init=1,lazy_journal_init=1", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        path.unlink(missing_ok=True)
        raise VmmError(f"cannot create the VM's disk: {proc.stderr.strip()}")


def clone_disk(source: Path, target: Path) -> None:
    """Copy only the allocated blocks of `source` (or share them, where the file system can)."""
    proc = subprocess.run(
        ["cp", "--sparse=always", "--reflink=auto", str(source), str(target)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        target.unlink(missing_ok=True)
        raise VmmError(f"cannot copy the snapshot's disk: {proc.stderr.strip()}")
    target.chmod(0o600)
