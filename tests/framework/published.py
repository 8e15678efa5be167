"""A client of a published port: the host's 127.0.0.1, as a user's browser or curl sees it."""

from __future__ import annotations

import socket

TIMEOUT = 30.0


def http_get(port: int, timeout: float = TIMEOUT) -> bytes:
    """The whole answer to `GET /` (HTTP/1.0: the server closes when done)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data


def refused(port: int, timeout: float = TIMEOUT) -> bool:
    """Whether nothing listens on the port any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
    except ConnectionRefusedError:
        return True
    return False
