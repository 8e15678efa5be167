"""A minimal QMP client: JSON lines over QEMU's monitor socket.

Commands can be pipelined (sent back to back, answers read later): a restore sends its three
commands without waiting, which saves a round trip through QEMU's main loop for each.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from pyro_mcp.errors import PyroTimeoutError, VmmError
from pyro_mcp.host.unix import connect_when_ready


class Qmp:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self.events: list[dict[str, Any]] = []

    @classmethod
    def connect(cls, path: Path, timeout: float) -> Qmp:
        """Connect once QEMU has created the socket, and read its greeting."""
        deadline = time.monotonic() + timeout
        sock = connect_when_ready(path, timeout, "QEMU did not open its monitor")
        qmp = cls(sock)
        sock.settimeout(max(deadline - time.monotonic(), 1.0))
        try:
            qmp._read_message()  # the greeting
        except BaseException:
            sock.close()
            raise
        return qmp

    def send(self, command: str, arguments: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:  # QEMU is gone (EPIPE) or stuck (timeout): the VMM failed
            raise _failure(exc) from exc

    def result(self) -> Any:
        """The next command answer (events seen on the way are kept in `events`)."""
        while True:
            message = self._read_message()
            if "event" in message:
                self.events.append(message)
                continue
            if "error" in message:
                error = message["error"]
                raise VmmError(f"QEMU refused a command: {error.get('desc', error)}")
            return message.get("return")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        self.send(command, arguments)
        return self.result()

    def _read_message(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(65536)
            except OSError as exc:  # a reset: QEMU died with our commands unread
                raise _failure(exc) from exc
            if not chunk:
                raise VmmError("QEMU closed its monitor connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise VmmError(f"unexpected QMP message: {line[:200]!r}")
        return message

    def close(self) -> None:
        self.sock.close()


def _failure(exc: OSError) -> VmmError | PyroTimeoutError:
    if isinstance(exc, TimeoutError):
        return PyroTimeoutError("QEMU did not answer on its monitor in time")
    return VmmError(f"QEMU's monitor connection failed: {exc}")
