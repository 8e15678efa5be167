"""The agent's two ways of archiving a directory (GNU tar, and tarfile where the system has no
tar) produce the same members, and both leave sockets, FIFOs and devices out."""

from __future__ import annotations

import io
import os
import socket
import tarfile
import threading
from pathlib import Path

import pytest

from pyro_mcp.agent import archives, files


class FakeCall:
    """The part of agent.Call that archiving uses: output collected, never cancelled."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.out = bytearray()

    def check_cancelled(self) -> None:
        pass

    def send_output(self, stream: str, data: bytes) -> None:
        self.out += data


def build(top: Path) -> None:
    (top / "src" / "pkg").mkdir(parents=True)
    (top / "src" / "pkg" / "mod.py").write_text("print('hi')\n")
    (top / "run.sh").write_text("#!/bin/sh\n")
    (top / "run.sh").chmod(0o755)
    (top / "big").write_bytes(os.urandom(200_000))
    (top / "name with\nnewline").write_text("odd\n")
    (top / "empty").mkdir()
    (top / "src" / "link").symlink_to("pkg/mod.py")
    os.mkfifo(top / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(top / "sock"))
    sock.close()


def archive(
    top: Path, gnu: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, tuple[bytes, int, str, bytes]], int, int]:
    monkeypatch.setattr(archives, "_GNU_TAR", gnu)
    call = FakeCall()
    sink = files.DataSink(call)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        entries, skipped = archives._archive_directory(fd, sink, call)
    finally:
        os.close(fd)
    sink.flush()
    members = {}
    with tarfile.open(fileobj=io.BytesIO(bytes(call.out))) as tar:
        for info in tar:
            data = tar.extractfile(info).read() if info.isreg() else b""
            members[info.name] = (info.type, info.mode & 0o777, info.linkname, data)
    return members, entries, skipped


def test_gnu_tar_and_tarfile_archive_a_directory_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(tmp_path)
    gnu, gnu_entries, gnu_skipped = archive(tmp_path, True, monkeypatch)
    plain, entries, skipped = archive(tmp_path, False, monkeypatch)
    assert gnu == plain
    assert (gnu_entries, gnu_skipped) == (entries, skipped) == (8, 2)
    assert gnu["src/link"][0] == tarfile.SYMTYPE and gnu["src/link"][2] == "pkg/mod.py"
    assert gnu["run.sh"][1] == 0o755 and gnu["name with\nnewline"][3] == b"odd\n"
    assert "fifo" not in gnu and "sock" not in gnu
