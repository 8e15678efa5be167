"""Pack a Debian root tree into the read-only ext4 image every VM of an environment shares."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pyro_mcp.errors import BuildError

_MIB = 1 << 20


def _tree_usage(root: Path) -> tuple[int, int]:
    """Bytes (in 4 KiB blocks) and inode count of the tree, without following links."""
    size = inodes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            size += (st.st_size + 4095) // 4096 * 4096
            inodes += 1
    return size, inodes


def make_image(root: Path, image: Path, label: str = "pyro-root") -> None:
    """Write `root` into a new ext4 image at `image`, sized to fit with some slack.

    No journal: the image is only ever mounted read-only.
    """
    used, inodes = _tree_usage(root)
    size_mib = (used * 115 // 100) // _MIB + 64
    args = [
        "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-O", "^has_journal",
        "-L", label, "-N", str(inodes + inodes // 5 + 1024), "-m", "0",
        "-E", "root_owner=0:0", "-d", str(root), str(image), f"{size_mib}M",
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"mke2fs could not write the root image: {proc.stderr.strip()}")
