"""UNIX socket addresses of any length: sun_path holds 107 bytes, VM directories may not."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pyro_mcp.errors import PyroTimeoutError

SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes, the last one a NUL


@contextlib.contextmanager
def unix_address(path: Path | str) -> Iterator[str]:
    """An address for `path` that connect() and bind() take even beyond the limit."""
    path = Path(path)
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield str(path)
        return
    # Deep state directories (and jails) go through a directory file descriptor instead.
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def connect_unix(path: Path | str, timeout: float | None) -> socket.socket:
    """A stream socket connected to `path` (raises what connect() raises)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        with unix_address(path) as address:
            sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_when_ready(path: Path | str, timeout: float, what: str) -> socket.socket:
    """Connect to a socket a just-started process will create; `what` names it in the error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect_unix(path, None)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() >= deadline:
                raise PyroTimeoutError(f"{what} {path} within {timeout:.0f} s") from None
            time.sleep(0.002)


def bind_unix(sock: socket.socket, path: Path | str) -> None:
    with unix_address(path) as address:
        sock.bind(address)
