"""Many host clients, one guest channel: the supervisor's frame relay.

Clients speak the guest protocol to the supervisor's socket exactly as they would to the
agent. Each forwarded request gets a fresh guest-side id; the client's later frames for it
(cancel, and in: the request's input) carry that id to the guest, and frames coming back are
mapped to the client and id that asked. A client that disconnects has its requests cancelled in the
guest, so an abandoned command never keeps running. The guest is hostile: its frames go
through the same bounded reader, and a frame for an unknown id is dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from pyro_mcp.protocol import frames

log = logging.getLogger("pyro.supervisor")

# Requests the supervisor answers itself instead of forwarding.
LOCAL_OPS = (
    "hello", "vm.status", "vm.shutdown", "vm.claim", "vm.suspend", "disk.snapshot", "net.allow",
    "ports.publish", "ports.adopt", "ports.close", "ports.list",
)  # fmt: skip


class _Conn:
    """A socket with a write lock, so concurrent senders never interleave frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, header: dict[str, Any], body: bytes = b"") -> bool:
        data = frames.encode_frame(header, body)
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:
                return False
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Relay:
    """Routes frames between client connections and the single guest connection."""

    def __init__(self, guest: socket.socket, agent_info: dict[str, Any]) -> None:
        self.guest = _Conn(guest)
        self.agent_info = agent_info
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        # guest id -> (client conn, client id)
        self._routes: dict[int, tuple[_Conn, int]] = {}
        self._clients: set[_Conn] = set()
        self.on_guest_lost: Callable[[str], None] = lambda reason: None
        self.local_handler: Callable[[str, dict[str, Any]], dict[str, Any]] = lambda op, p: {}
        self.after_local: Callable[[str], None] = lambda op: None
        self.detached = False

    # --- guest side ------------------------------------------------------------------------

    def detach_guest(self) -> None:
        """Hang up on the guest on purpose (before a suspend): its agent sees the host leave,
        and the clients, the one asking for the suspend among them, stay connected."""
        self.detached = True
        self.guest.close()

    def run_guest_reader(self, reader: frames.FrameReader) -> None:
        """Forward guest frames until the channel ends; then fail every client."""
        reason = "guest agent connection closed"
        try:
            while (frame := reader.read_frame()) is not None:
                self._from_guest(frame)
        except (frames.FrameError, OSError) as exc:
            reason = f"guest agent channel broken: {exc}"
        if self.detached:
            return
        self.close_clients()
        self.on_guest_lost(reason)

    def _from_guest(self, frame: frames.Frame) -> None:
        with self._lock:
            route = self._routes.get(frame.id)
            if route is not None and frame.type == frames.RES:
                del self._routes[frame.id]
        if route is None:
            log.debug("dropping guest frame for unknown id %s", frame.id)
            return
        conn, client_id = route
        conn.send({**frame.header, "id": client_id}, frame.body)

    # --- client side -----------------------------------------------------------------------

    def serve_client(self, sock: socket.socket) -> None:
        """Relay one client's frames until it disconnects (runs in its own thread)."""
        conn = _Conn(sock)
        with self._lock:
            self._clients.add(conn)
        reader = frames.FrameReader(sock)
        greeted = False
        try:
            while (frame := reader.read_frame()) is not None:
                greeted = self._from_client(conn, frame, greeted)
        except (frames.FrameError, OSError) as exc:
            conn.send(frames.error_header(0, frames.ERR_PROTOCOL, str(exc)))
        finally:
            self._drop_client(conn)

    def _from_client(self, conn: _Conn, frame: frames.Frame, greeted: bool) -> bool:
        if frame.type == frames.CANCEL:
            self._cancel(conn, frame.id)
            return greeted
        if frame.type == frames.IN:
            self._input(conn, frame)
            return greeted
        if frame.type != frames.REQ:
            message = "clients send req, in and cancel frames"
            conn.send(frames.error_header(frame.id, frames.ERR_PROTOCOL, message))
            return greeted
        op = str(frame.header.get("op"))
        params = frame.header.get("params") or {}
        if op == "hello":
            return self._hello(conn, frame.id, params)
        if not greeted:
            message = "send hello first"
            conn.send(frames.error_header(frame.id, frames.ERR_HANDSHAKE_REQUIRED, message))
            return False
        if op in LOCAL_OPS:
            self._local(conn, frame.id, op, params)
        else:
            self._forward(conn, frame)
        return True

    def _hello(self, conn: _Conn, rid: int, params: dict[str, Any]) -> bool:
        if params.get("protocol") != frames.PROTOCOL_VERSION:
            message = f"supervisor speaks protocol {frames.PROTOCOL_VERSION}"
            conn.send(frames.error_header(rid, frames.ERR_VERSION_MISMATCH, message))
            return False
        ops = sorted({*self.agent_info.get("ops", []), *LOCAL_OPS})
        conn.send(frames.ok_header(rid, {**self.agent_info, "ops": ops}))
        return True

    def _local(self, conn: _Conn, rid: int, op: str, params: dict[str, Any]) -> None:
        try:
            result = self.local_handler(op, params)
        except frames.OpError as exc:  # a refusal that says why: the client maps its code
            conn.send(frames.error_header(rid, exc.code, str(exc)))
            return
        except Exception as exc:  # a local op must never take the supervisor down
            conn.send(frames.error_header(rid, frames.ERR_INTERNAL, str(exc)))
            return
        conn.send(frames.ok_header(rid, result))
        self.after_local(op)

    def _forward(self, conn: _Conn, frame: frames.Frame) -> None:
        guest_id = next(self._ids)
        with self._lock:
            self._routes[guest_id] = (conn, frame.id)
        if not self.guest.send({**frame.header, "id": guest_id}, frame.body):
            with self._lock:
                self._routes.pop(guest_id, None)
            message = "the guest agent is not reachable"
            conn.send(frames.error_header(frame.id, frames.ERR_INTERNAL, message))

    def _guest_ids(self, conn: _Conn, client_id: int) -> list[int]:
        with self._lock:
            return [g for g, (c, cid) in self._routes.items() if c is conn and cid == client_id]

    def _cancel(self, conn: _Conn, client_id: int) -> None:
        for guest_id in self._guest_ids(conn, client_id):
            self.guest.send(frames.cancel_header(guest_id))

    def _input(self, conn: _Conn, frame: frames.Frame) -> None:
        # Input for a request that already ended (or never existed) goes nowhere, as in the
        # agent: the client may still be streaming when an early error answered it.
        for guest_id in self._guest_ids(conn, frame.id):
            self.guest.send(frames.in_header(guest_id), frame.body)

    def _drop_client(self, conn: _Conn) -> None:
        with self._lock:
            self._clients.discard(conn)
            abandoned = [g for g, (c, _) in self._routes.items() if c is conn]
            for guest_id in abandoned:
                del self._routes[guest_id]
        for guest_id in abandoned:
            self.guest.send(frames.cancel_header(guest_id))
        conn.close()

    def close_clients(self) -> None:
        with self._lock:
            clients = list(self._clients)
        for conn in clients:
            conn.close()

    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)
