"""Published ports: 127.0.0.1:HOST_PORT on the host, relayed to GUEST_PORT in the guest for
exactly as long as the service that published it runs.

Transport: plain TCP. The listener lives in the supervisor's own namespace, bound to 127.0.0.1
only; for each connection it accepts, a socket made inside the VM's network namespace connects
to the guest (172.16.0.2) through the VM's TAP, and two threads copy the bytes both ways
through bounded buffers, passing each half-close on. Output from the VM's namespace itself is
not filtered by its nftables table and the guest's answers arrive as established, so the
filter needs no rule for it. Each stream has TCP's own flow control: a client that stops
reading stalls only its own connection. (Over the agent channel, one full input queue stalls
the whole channel, every other request included; see InputStream in agent/server.py.)

The ports of a service are bound before the service starts (a taken port starts nothing);
a watcher then waits in the guest (service.wait) for that run to end and closes them at once,
with no polling. Stopping the service closes them too (ports.close), and so does the end of
the VM (close_all). Reading a service's status or logs never touches them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_mcp.agent_client import services as agent_services
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.errors import (
    ConflictError,
    GuestError,
    InvalidArgumentError,
    NotFoundError,
    PyroError,
)
from pyro_mcp.network import netns
from pyro_mcp.network.addressing import GUEST_IP
from pyro_mcp.network.vm import VmNetwork
from pyro_mcp.protocol import frames, ops
from pyro_mcp.protocol import service_ops as sp

log = logging.getLogger("pyro.supervisor")

HOST = "127.0.0.1"
BACKLOG = 128
BUFFER_BYTES = 64 * 1024  # per direction of a connection: the relay's whole buffering
MAX_CONNECTIONS = 256  # per port; more are closed at once
CONNECT_TIMEOUT_S = 10.0
NO_NETWORK = (
    "this VM has no network device: published ports need a workspace with network_policy "
    "'egress+published-ports'"
)

# A socket connected to the guest's port N (made in the VM's namespace).
Connector = Callable[[int], socket.socket]


class _Pair:
    """One relayed connection: the client's socket and the guest's, copied both ways."""

    def __init__(self, client: socket.socket, guest: socket.socket, done: Callable[[_Pair], None]):
        self.client, self.guest, self._done = client, guest, done
        self._lock = threading.Lock()
        self._running = 2

    def run(self) -> None:
        """Copy guest -> client on a new thread and client -> guest on this one."""
        threading.Thread(target=self._pump, args=(self.guest, self.client), daemon=True).start()
        self._pump(self.client, self.guest)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        buf = bytearray(BUFFER_BYTES)
        view = memoryview(buf)
        try:
            while count := src.recv_into(buf):
                dst.sendall(view[:count])
            dst.shutdown(socket.SHUT_WR)  # pass the half-close on; the other way may go on
        except OSError:
            self.abort()  # a reset (or our close) on either side ends both ways
        finally:
            self._finish()

    def abort(self) -> None:
        for sock in (self.client, self.guest):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _finish(self) -> None:
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self.client.close()
            self.guest.close()
            self._done(self)


class Forward:
    """One published port: a listener on 127.0.0.1 and the connections it relays."""

    def __init__(self, listener: socket.socket, guest_port: int, connect: Connector) -> None:
        self.listener, self.guest_port, self._connect = listener, guest_port, connect
        self.host_port: int = listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._closed = False

    @classmethod
    def bind(cls, host_port: int | None, guest_port: int, connect: Connector) -> Forward:
        """Listen on 127.0.0.1:host_port (any free port for None); a taken port is a
        conflict error naming it."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((HOST, host_port or 0))
            listener.listen(BACKLOG)
        except OSError as exc:
            listener.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise frames.OpError(
                    sp.ERR_CONFLICT,
                    f"host port {host_port} on {HOST} is already in use; publish another "
                    "host_port, or none to get a free one",
                ) from None
            raise
        return cls(listener, guest_port, connect)

    def start(self) -> None:
        threading.Thread(
            target=self._accept_loop, daemon=True, name=f"port {self.host_port}"
        ).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            guest = self._connect(self.guest_port)
        except OSError as exc:
            log.info(
                "port %d: cannot reach guest port %d: %s", self.host_port, self.guest_port, exc
            )
            conn.close()
            return
        for sock in (conn, guest):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(conn, guest, self._forget)
        with self._lock:
            refused = self._closed or len(self._pairs) >= MAX_CONNECTIONS
            if not refused:
                self._pairs.add(pair)
        if refused:
            conn.close()
            guest.close()
            return
        pair.run()

    def _forget(self, pair: _Pair) -> None:
        with self._lock:
            self._pairs.discard(pair)

    def close(self) -> None:
        """Stop listening and end every connection relayed so far."""
        with self._lock:
            self._closed = True
            pairs = list(self._pairs)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.listener.close()
        for pair in pairs:
            pair.abort()

    def describe(self) -> dict[str, int]:
        return {"host_port": self.host_port, "guest_port": self.guest_port}


@dataclass
class _Published:
    run_id: str
    forwards: list[Forward] = field(default_factory=list)


class OwnClient:
    """The supervisor as a client of its own socket: its requests to the guest go through its
    relay like anyone's. Connected on first use, again if the connection broke."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._client: GuestClient | None = None
        self._closed = False

    def get(self) -> GuestClient:
        with self._lock:
            if self._closed:
                raise GuestError("the VM is ending: its supervisor makes no more requests")
            if self._client is None or self._client.closed:
                self._client = GuestClient.connect_unix(str(self.path), timeout=10.0)
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client, self._closed = self._client, None, True
        if client is not None:
            client.close()


class ServicePorts:
    """The supervisor's published ports, by service: its local ops ports.publish/close/list."""

    def __init__(self, connect: Connector | None, guest: OwnClient) -> None:
        self._connect, self._guest = connect, guest
        self._lock = threading.Lock()
        self._published: dict[str, _Published] = {}

    @classmethod
    def for_vm(cls, socket_path: Path, network: VmNetwork | None) -> ServicePorts:
        """The ports of the VM whose supervisor listens on `socket_path`; none may be
        published without a network."""
        if network is None:
            return cls(None, OwnClient(socket_path))
        return cls(netns_connector(lambda: network.ns_fd, GUEST_IP), OwnClient(socket_path))

    def handle(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        """One local op; a bad request or a conflict is an OpError carrying its code."""
        try:
            if op == "ports.publish":
                return self.publish(params)
            if op == "ports.adopt":
                return self.adopt(params)
            if op == "ports.close":
                ops.check_keys(params, {"name", "run_id"})
                name = sp.check_name(params.get("name"))
                return {"closed": self.close(name, sp.parse_run_id(params.get("run_id")))}
            if op == "ports.list":
                ops.check_keys(params, ())
                return {"services": self.list()}
        except ops.ParamError as exc:
            raise frames.OpError(frames.ERR_INVALID_ARGUMENT, str(exc)) from None
        raise frames.OpError(frames.ERR_UNKNOWN_OP, f"unknown operation {op!r}")

    def publish(self, params: dict[str, Any]) -> dict[str, Any]:
        """Bind every port, start the service, relay while it runs; nothing stays bound
        if the start fails or the service is not running at its end."""
        ops.check_keys(params, {"start", "ports"})
        start = params.get("start")
        if not isinstance(start, dict):
            raise ops.ParamError("start must be the parameters of service.start")
        name, specs = sp.parse_start(start).name, sp.parse_ports(params.get("ports"))
        if self._connect is None:
            raise frames.OpError(frames.ERR_INVALID_ARGUMENT, NO_NETWORK)
        with self._lock:
            if name in self._published:
                raise frames.OpError(sp.ERR_CONFLICT, f"service {name!r} is already running")
        forwards = self._bind(specs, self._connect)
        try:
            record = agent_services.start_service(self._guest.get(), start)
        except BaseException as exc:
            for forward in forwards:
                forward.close()
            raise _op_error(exc) from None
        if record.state != "running":
            for forward in forwards:
                forward.close()
            forwards = []
        else:
            self._keep(name, record.run_id, forwards)
        return {
            "service": agent_services.record_json(record),
            "published_ports": [forward.describe() for forward in forwards],
        }

    def adopt(self, params: dict[str, Any]) -> dict[str, Any]:
        """Bind the ports of a service that already runs (in a resumed VM) and relay while
        it does; a run that has ended closes them again at once."""
        ops.check_keys(params, {"name", "run_id", "ports"})
        name, run_id = sp.check_name(params.get("name")), sp.parse_run_id(params.get("run_id"))
        specs = sp.parse_ports(params.get("ports"))
        if self._connect is None:
            raise frames.OpError(frames.ERR_INVALID_ARGUMENT, NO_NETWORK)
        with self._lock:
            if name in self._published:
                raise frames.OpError(sp.ERR_CONFLICT, f"service {name!r} has published ports")
        forwards = self._bind(specs, self._connect)
        self._keep(name, run_id, forwards)
        return {"published_ports": [forward.describe() for forward in forwards]}

    @staticmethod
    def _bind(specs: list[sp.PortSpec], connect: Connector) -> list[Forward]:
        forwards: list[Forward] = []
        try:
            for spec in specs:
                forwards.append(Forward.bind(spec.host_port, spec.guest_port, connect))
        except BaseException:
            for forward in forwards:
                forward.close()
            raise
        return forwards

    def _keep(self, name: str, run_id: str, forwards: list[Forward]) -> None:
        with self._lock:
            self._published[name] = _Published(run_id, forwards)
        for forward in forwards:
            forward.start()
        threading.Thread(target=self._watch, args=(name, run_id), daemon=True).start()

    def _watch(self, name: str, run_id: str) -> None:
        """Close the run's ports the moment it ends in the guest (or the guest goes)."""
        try:
            agent_services.wait_service(self._guest.get(), name, run_id)
        except (PyroError, OSError) as exc:
            log.info("no longer watching service %s: %s", name, exc)
        self.close(name, run_id)

    def close(self, name: str, run_id: str | None = None) -> int:
        """Close the ports of service `name` (only of run `run_id`, if given)."""
        with self._lock:
            published = self._published.get(name)
            if published is None or run_id not in (None, published.run_id):
                return 0
            del self._published[name]
        for forward in published.forwards:
            forward.close()
        return len(published.forwards)

    def list(self) -> dict[str, Any]:
        with self._lock:
            return {
                name: {"run_id": p.run_id, "published_ports": [f.describe() for f in p.forwards]}
                for name, p in self._published.items()
            }

    def close_all(self) -> None:
        """The VM ends: every listener and connection goes."""
        with self._lock:
            names = list(self._published)
        for name in names:
            self.close(name)
        self._guest.close()


def _op_error(exc: BaseException) -> BaseException:
    """A failed start as the error code and message the client should see."""
    if isinstance(exc, frames.OpError | ops.ParamError):
        return exc
    if not isinstance(exc, PyroError):
        return exc
    message = exc.message.partition(" failed: ")[2] or exc.message
    code = frames.ERR_INTERNAL
    if isinstance(exc, ConflictError):
        code = sp.ERR_CONFLICT
    elif isinstance(exc, InvalidArgumentError):
        code = frames.ERR_INVALID_ARGUMENT
    elif isinstance(exc, NotFoundError):
        code = frames.ERR_NOT_FOUND
    elif isinstance(exc, GuestError):
        code = str(exc.details.get("guest_code") or frames.ERR_INTERNAL)
    return frames.OpError(code, message)


def netns_connector(ns_fd: Callable[[], int | None], address: str) -> Connector:
    """Connections to `address`, from sockets made in the namespace `ns_fd()` (the VM's)."""

    def connect(port: int) -> socket.socket:
        fd = ns_fd()
        if fd is None:
            raise OSError(errno.ENETUNREACH, "the VM's network is gone")
        with netns.entered(fd):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect((address, port))
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return sock

    return connect
