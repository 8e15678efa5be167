"""A scripted, hostile guest on a socketpair; optionally with a host end that holds back the
client's reader, so a test can force one interleaving of sending and receiving."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from framework.waiting import WAIT
from pyro_mcp.protocol import frames
from pyro_mcp.protocol.frames import Frame, FrameReader, encode_frame


class HeldSocket(socket.socket):
    """A host end whose reads wait until a send reaches the point `release_on` names:
    "send" (the first chunk sent against a deadline: input) or "failure" (a send that fails)."""

    def __init__(self, sock: socket.socket, release_on: str) -> None:
        super().__init__(sock.family, sock.type, fileno=sock.detach())
        self.release_on = release_on
        self.released = threading.Event()

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if not self.released.wait(WAIT):
            raise RuntimeError(f"the reader was never released (on {self.release_on})")
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        if self.release_on == "send":
            self.released.set()
        with self._release_on_failure():
            return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        with self._release_on_failure():
            super().sendall(data, flags)

    @contextlib.contextmanager
    def _release_on_failure(self) -> Iterator[None]:
        try:
            yield
        except OSError:
            self.released.set()
            raise


class ScriptedGuest:
    """The guest end of a socketpair, driven by a test script on its own thread; `host` is the
    end to give GuestClient (a HeldSocket when release_on is given)."""

    def __init__(
        self, script: Callable[[ScriptedGuest], None], *, release_on: str | None = None
    ) -> None:
        host, self.sock = socket.socketpair()
        self.host = host if release_on is None else HeldSocket(host, release_on)
        self.reader = FrameReader(self.sock)
        self.finished = threading.Event()  # the script has returned (or failed)
        threading.Thread(target=self._run, args=(script,), daemon=True).start()

    def _run(self, script: Callable[[ScriptedGuest], None]) -> None:
        with self.sock, contextlib.suppress(OSError, EOFError, frames.FrameError):
            try:
                script(self)
            finally:
                self.finished.set()
            while self.reader.read_frame() is not None:
                pass  # keep the connection until the host hangs up

    def next_request(self) -> Frame:
        while (frame := self.reader.read_frame()) is not None:
            if frame.type == "req":
                return frame
        raise EOFError

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        self.sock.sendall(encode_frame(header, body))
