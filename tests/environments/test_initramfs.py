"""The newc writer, the base and pyro parts of the initramfs, and the guest fingerprint."""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.environments import initramfs
from pyro_mcp.environments.initramfs import directory, file, symlink, write_cpio
from pyro_mcp.environments.kernel import KernelModule

Reader = Callable[[bytes], Any]  # the `read_newc` fixture of tests/environments/conftest.py

SAMPLE = [
    directory("bin"),
    file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
    symlink("bin/sh", "busybox"),
    file("/etc/odd-size", b"12345"),  # a leading slash is dropped
    file("empty", b""),
]


def test_write_cpio_parses_back(read_newc: Reader) -> None:
    blob = write_cpio(SAMPLE)
    assert len(blob) % 4 == 0
    archive = read_newc(blob)
    assert archive.trailers == 1
    assert archive.names() == ["bin", "bin/tool", "bin/sh", "etc/odd-size", "empty"]
    assert blob.endswith(b"TRAILER!!!\x00" + b"\x00" * (-(110 + 11) % 4))

    tool = archive.get("bin/tool")
    assert tool.data == b"#!/bin/sh\necho hi\n"
    assert stat.S_ISREG(tool.mode) and stat.S_IMODE(tool.mode) == 0o755
    assert stat.S_ISDIR(archive.get("bin").mode)
    link = archive.get("bin/sh")
    assert stat.S_ISLNK(link.mode)
    assert link.data == b"busybox"
    assert archive.get("etc/odd-size").data == b"12345"
    assert stat.S_IMODE(archive.get("etc/odd-size").mode) == 0o644
    assert archive.get("empty").header["filesize"] == 0


def test_members_are_root_owned_with_mtime_zero_and_unique_inodes(read_newc: Reader) -> None:
    archive = read_newc(write_cpio(SAMPLE))
    for member in archive.members:
        assert member.header["uid"] == member.header["gid"] == 0
        assert member.header["mtime"] == 0
        assert member.header["nlink"] == 1
        assert member.header["rdevmajor"] == member.header["rdevminor"] == 0
    inodes = [m.header["ino"] for m in archive.members]
    assert len(set(inodes)) == len(inodes)


def test_write_cpio_is_reproducible() -> None:
    assert write_cpio(SAMPLE) == write_cpio(list(SAMPLE))
    assert write_cpio([]) == write_cpio([])


def test_an_empty_archive_is_just_a_trailer(read_newc: Reader) -> None:
    archive = read_newc(write_cpio([]))
    assert archive.members == []
    assert archive.trailers == 1


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio missing: apt-get install -y cpio")
def test_gnu_cpio_reads_our_archive(tmp_path: Path) -> None:
    blob = write_cpio(SAMPLE)
    listing = (
        subprocess.run(["cpio", "-it", "--quiet"], input=blob, capture_output=True, check=True)
        .stdout.decode()
        .split()
    )
    assert listing == ["bin", "bin/tool", "bin/sh", "etc/odd-size", "empty"]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames"], input=blob, cwd=out, check=True
    )
    assert (out / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((out / "bin" / "tool").stat().st_mode) == 0o755
    assert (out / "bin" / "sh").is_symlink()
    assert (out / "bin" / "sh").readlink() == Path("busybox")
    assert (out / "etc" / "odd-size").read_bytes() == b"12345"


def test_guest_files_hold_init_and_agent() -> None:
    files = initramfs.guest_files()
    agent = [
        "__init__",
        "__main__",
        "archives",
        "commands",
        "files",
        "guest_secrets",
        "patches",
        "server",
        "sessions",
        "system",
        *("readiness", "service_logs", "service_process", "services"),
        *("pty_shell", "shell_output", "shells"),
    ]
    protocol = ("__init__", "file_ops", "frames", "ops", "redaction", "service_ops", "shell_ops")
    assert set(files) == {
        "init",
        *(f"pyro/lib/pyro_mcp/agent/{name}.py" for name in agent),
        *(f"pyro/lib/pyro_mcp/protocol/{name}.py" for name in protocol),
    }
    assert files["init"].startswith(b"#!")
    assert b"PYRO_PROBE_OK" in files["init"]
    assert all(files.values())


def test_guest_digest_is_stable_and_follows_the_files(monkeypatch: pytest.MonkeyPatch) -> None:
    first = initramfs.guest_digest()
    assert first == initramfs.guest_digest()
    assert len(first) == 64
    changed = {**initramfs.guest_files(), "pyro/lib/pyro_mcp/agent/server.py": b"# a new agent\n"}
    monkeypatch.setattr(initramfs, "guest_files", lambda: changed)
    assert initramfs.guest_digest() != first


def test_pyro_archive_carries_the_guest_files(read_newc: Reader) -> None:
    archive = read_newc(initramfs.pyro_archive())
    files = initramfs.guest_files()
    folders = ["pyro", "pyro/lib", "pyro/lib/pyro_mcp", "pyro/lib/pyro_mcp/agent"]
    folders.append("pyro/lib/pyro_mcp/protocol")
    assert archive.names() == [*folders, *sorted(files)]
    for name, data in files.items():
        assert archive.get(name).data == data
    assert stat.S_IMODE(archive.get("init").mode) == 0o755
    assert stat.S_IMODE(archive.get("pyro/lib/pyro_mcp/agent/server.py").mode) == 0o644


def test_base_archive_holds_busybox_modules_and_their_order(
    tmp_path: Path, read_newc: Reader
) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF busybox")
    modules = []
    for name in ("virtio_ring", "virtio_blk"):
        path = tmp_path / f"{name}.ko"
        path.write_bytes(f"\x7fELF module {name}".encode())
        modules.append(KernelModule(name, path, ()))
    archive = read_newc(initramfs.base_archive(busybox, modules))
    names = archive.names()
    for folder in ("bin", "dev", "proc", "sys", "mnt", "newroot", "lib", "lib/modules"):
        assert stat.S_ISDIR(archive.get(folder).mode), folder
    assert archive.get("bin/busybox").data == b"\x7fELF busybox"
    assert stat.S_IMODE(archive.get("bin/busybox").mode) == 0o755
    assert archive.get("bin/sh").data == b"busybox"
    assert archive.get("lib/modules/virtio_blk.ko").data == b"\x7fELF module virtio_blk"
    assert archive.get("lib/modules/order").data == b"virtio_ring\nvirtio_blk\n"
    assert names.index("lib/modules") < names.index("lib/modules/virtio_ring.ko")


def test_base_and_pyro_parts_concatenate(read_newc: Reader, tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"bb")
    blob = initramfs.base_archive(busybox, []) + initramfs.pyro_archive()
    archive = read_newc(blob)
    assert archive.trailers == 2
    assert {"bin/busybox", "init", "pyro/lib/pyro_mcp/agent/server.py"} <= set(archive.names())
    digest = hashlib.sha256(blob).hexdigest()
    again = initramfs.base_archive(busybox, []) + initramfs.pyro_archive()
    assert hashlib.sha256(again).hexdigest() == digest
