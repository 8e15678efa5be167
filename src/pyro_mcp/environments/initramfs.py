"""Write the guest's initramfs as `newc` cpio archives, without root and without device nodes.

The initramfs is two archives laid end to end, which the kernel unpacks in turn: a base part
(busybox and the kernel modules) that only changes with the kernel, and a small pyro part
(the init and the guest agent) rebuilt from the package's own files, so an agent change never
rebuilds anything Debian.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pyro_mcp.environments.kernel import KernelModule, read_module

_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, a regular file (`data`) or a symlink (`target`)."""

    path: str
    mode: int
    data: bytes = b""
    target: str | None = None


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def file(path: str, data: bytes, perms: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perms, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode(), target)


def _pad(length: int) -> bytes:
    return b"\x00" * (-length % 4)


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    fields = (ino, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0, 0, 0, len(name), 0)
    return b"070701" + b"".join(b"%08X" % value for value in fields)


def write_cpio(entries: Iterable[Entry]) -> bytes:
    """A `newc` archive of `entries`, owned by root, with mtime 0 so builds are reproducible."""
    out = bytearray()
    ino = 1
    for entry in [*entries, Entry(_TRAILER, 0)]:
        name = entry.path.lstrip("/").encode() + b"\x00"
        head = _header(ino if entry.path != _TRAILER else 0, entry, name)
        out += head + name + _pad(len(head) + len(name))
        out += entry.data + _pad(len(entry.data))
        ino += 1
    return bytes(out)


def base_archive(busybox: Path, modules: list[KernelModule]) -> bytes:
    """busybox, the modules and their load order: the part that follows the kernel."""
    entries = [directory(d) for d in ("bin", "dev", "proc", "sys", "mnt", "newroot", "lib")]
    entries += [
        file("bin/busybox", busybox.read_bytes(), 0o755),
        symlink("bin/sh", "busybox"),
        directory("lib/modules"),
    ]
    for module in modules:
        _, data = read_module(module.path)
        entries.append(file(f"lib/modules/{module.name}.ko", data))
    order = "".join(f"{m.name}\n" for m in modules).encode()
    entries.append(file("lib/modules/order", order))
    return write_cpio(entries)


# What runs in the guest: these two packages, whole, and nothing else of pyro_mcp. They import
# only the standard library and each other (import-linter checks it), so nothing more is needed.
GUEST_PACKAGES = ("pyro_mcp.agent", "pyro_mcp.protocol")
GUEST_LIB = "pyro/lib"


def guest_files() -> dict[str, bytes]:
    """The init and every module of the guest packages, by their path in the initramfs."""
    files = {"init": resources.files("pyro_mcp.agent").joinpath("init.sh").read_bytes()}
    for package in GUEST_PACKAGES:
        folder = resources.files(package)
        prefix = f"{GUEST_LIB}/{package.replace('.', '/')}"
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".py"):
                files[f"{prefix}/{entry.name}"] = entry.read_bytes()
    return files


def guest_digest() -> str:
    """Fingerprint of the init and agent; a change means the pyro part must be rebuilt."""
    digest = hashlib.sha256()
    for name, data in sorted(guest_files().items()):
        digest.update(name.encode() + b"\x00" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def pyro_archive() -> bytes:
    files = guest_files()
    folders = {str(Path(name).parent) for name in files} - {"."}
    parents = {str(p) for folder in folders for p in Path(folder).parents} - {"."}
    entries = [directory(d) for d in sorted(folders | parents)]
    for name, data in sorted(files.items()):
        entries.append(file(name, data, 0o755 if name == "init" else 0o644))
    return write_cpio(entries)
