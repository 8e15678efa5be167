"""A reader for `newc` cpio archives (laid end to end, as the kernel reads an initramfs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

NEWC_MAGIC = b"070701"
HEADER_SIZE = 110
FIELDS = (
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
)


@dataclass(frozen=True)
class Member:
    name: str
    header: dict[str, int]
    data: bytes
    offset: int  # where the header starts

    @property
    def mode(self) -> int:
        return self.header["mode"]


@dataclass(frozen=True)
class Archive:
    members: list[Member]  # trailers left out
    trailers: int

    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def get(self, name: str) -> Member:
        (found,) = [m for m in self.members if m.name == name]
        return found


def parse_newc(blob: bytes) -> Archive:
    """Every member of every archive in `blob`; asserts the format's rules on the way."""
    members: list[Member] = []
    trailers = 0
    pos = 0
    while pos < len(blob):
        if blob[pos : pos + 4] == b"\x00\x00\x00\x00":
            pos += 4  # padding between archives, which the kernel skips too
            continue
        assert pos % 4 == 0, f"header at {pos} is not 4-byte aligned"
        assert blob[pos : pos + 6] == NEWC_MAGIC, f"bad magic at {pos}: {blob[pos : pos + 6]!r}"
        raw = blob[pos + 6 : pos + HEADER_SIZE]
        header = {f: int(raw[i * 8 : i * 8 + 8], 16) for i, f in enumerate(FIELDS)}
        name_start = pos + HEADER_SIZE
        name_bytes = blob[name_start : name_start + header["namesize"]]
        assert name_bytes.endswith(b"\x00"), "name is not NUL-terminated"
        name = name_bytes[:-1].decode()
        data_start = name_start + header["namesize"]
        data_start += -data_start % 4
        assert blob[name_start + header["namesize"] : data_start].strip(b"\x00") == b""
        data = blob[data_start : data_start + header["filesize"]]
        assert len(data) == header["filesize"], f"{name}: archive ends inside the data"
        end = data_start + header["filesize"]
        end += -end % 4
        assert blob[data_start + header["filesize"] : end].strip(b"\x00") == b""
        if name == "TRAILER!!!":
            trailers += 1
        else:
            members.append(Member(name, header, data, pos))
        pos = end
    return Archive(members, trailers)


@pytest.fixture
def read_newc() -> Callable[[bytes], Archive]:
    return parse_newc
