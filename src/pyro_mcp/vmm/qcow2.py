"""Workspace disks with copy-on-write snapshots: qcow2 images and their internal snapshots.

A snapshot inside a qcow2 image shares every cluster with the live disk until one of them
writes it, so taking one costs a metadata update, whatever the disk holds (ext4 here has no
reflink; a copy would grow with the data). qemu-img works on an image no VMM has open; a
running VM's image is snapshotted through its QEMU (vmm/qemu.py). Every image holds TEMPLATE:
the state it was made in, which a reset to the baseline goes back to without losing the
named snapshots beside it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from pyro_mcp.errors import VmmError
from pyro_mcp.host import tools

SUFFIX = ".qcow2"
TEMPLATE = "pyro.template"  # user snapshot names start with a letter or digit: no clash


def _run(*args: str) -> str:
    binary = tools.require(tools.QEMU_IMG)[tools.QEMU_IMG.command]
    proc = subprocess.run([binary, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.strip() or f"exit code {proc.returncode}"
        raise VmmError(f"qemu-img {args[0]} failed: {detail}")
    return proc.stdout


def from_raw(raw: Path, image: Path) -> None:
    """A new qcow2 `image` holding what the raw disk `raw` holds (only its allocated data is
    copied), with its TEMPLATE snapshot taken."""
    try:
        _run("convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
        image.chmod(0o600)
        snapshot(image, TEMPLATE)
    except BaseException:
        image.unlink(missing_ok=True)
        raise


def overlay(backing: Path, image: Path) -> None:
    """A new qcow2 `image` that reads through to `backing` and keeps every write itself, so
    `backing` (raw or qcow2) is only ever read."""
    fmt = "qcow2" if backing.suffix == SUFFIX else "raw"
    _run("create", "-q", "-f", "qcow2", "-b", str(backing.resolve()), "-F", fmt, str(image))
    image.chmod(0o600)


def snapshot(image: Path, name: str) -> None:
    _run("snapshot", "-c", name, str(image))


def revert(image: Path, name: str) -> None:
    """The live disk back to snapshot `name` (the snapshots themselves stay)."""
    _run("snapshot", "-a", name, str(image))


def delete(image: Path, name: str) -> None:
    _run("snapshot", "-d", name, str(image))


def info(image: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_run("info", "--output=json", "-U", str(image)))
    return data


def names(image: Path) -> list[str]:
    """The snapshots the image holds, TEMPLATE included."""
    return [str(s["name"]) for s in info(image).get("snapshots", [])]
