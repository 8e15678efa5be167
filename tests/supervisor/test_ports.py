"""Published ports: the relay against loopback servers this test makes, the path into a VM's
namespace through its real nftables table (namespaces this test makes), and the supervisor's
ports.* operations against a real agent whose services listen on loopback.

Only loopback and namespaces created here are ever used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from framework.agent_harness import short_workdir, start_agent, stop_agent
from framework.published import http_get
from framework.published import refused as published_refused
from framework.sandbox_netns import home_namespace_unchanged, needs_namespaces, netns_sandbox
from framework.waiting import wait_until
from pyro_mcp.agent_client import services as agent_services
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.network import netns, rules
from pyro_mcp.network.allowlist import AllowList
from pyro_mcp.protocol import frames
from pyro_mcp.supervisor.ports import NO_NETWORK, Forward, OwnClient, ServicePorts, netns_connector

__all__ = ["home_namespace_unchanged", "netns_sandbox"]  # fixtures for the namespace test

WAIT = 15.0
Handler = Callable[[socket.socket], None]


def loopback(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


class Server:
    """A TCP server on `host` (made in namespace `ns`, if given); each connection on its own
    thread, handled by `handler`."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", ns: int | None = None) -> None:
        if ns is None:
            self.sock = socket.socket()
        else:
            with netns.entered(ns):
                self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the peer went: not what is tested here
            self.handler(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept; a close alone would not
        self.sock.close()
        self.thread.join(WAIT)


def echo_then_bye(conn: socket.socket) -> None:
    """Echo until the client half-closes, then say bye: the half-close must pass through."""
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.sendall(b"bye")


def digest(conn: socket.socket) -> None:
    """Read everything, answer with its size and sha256."""
    h, size = hashlib.sha256(), 0
    while data := conn.recv(1 << 20):
        h.update(data)
        size += len(data)
    conn.sendall(f"{size} {h.hexdigest()}".encode())


def flood(conn: socket.socket) -> None:
    chunk = b"x" * 65536
    while True:
        conn.sendall(chunk)


def read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


@pytest.fixture
def forward() -> Iterator[Callable[[Handler], Forward]]:
    made: list[tuple[Server, Forward]] = []

    def make(handler: Handler) -> Forward:
        server = Server(handler)
        relay = Forward.bind(None, server.port, loopback)
        relay.start()
        made.append((server, relay))
        return relay

    yield make
    for server, relay in made:
        relay.close()
        server.close()


def test_bytes_flow_both_ways_and_a_half_close_passes_through(
    forward: Callable[[Handler], Forward],
) -> None:
    relay = forward(echo_then_bye)
    assert relay.listener.getsockname()[0] == "127.0.0.1"  # never another address
    with loopback(relay.host_port) as conn:
        conn.sendall(b"hello")
        assert conn.recv(5) == b"hello"
        conn.shutdown(socket.SHUT_WR)
        assert read_all(conn) == b"bye"


def test_a_bulk_transfer_arrives_byte_exact(forward: Callable[[Handler], Forward]) -> None:
    relay = forward(digest)
    payload = os.urandom(16 * 1024 * 1024)
    with loopback(relay.host_port) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        answer = read_all(conn).decode()
    assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"


def test_a_client_that_stops_reading_stalls_only_its_own_connection(
    forward: Callable[[Handler], Forward],
) -> None:
    flooding, echoing = forward(flood), forward(echo_then_bye)
    with loopback(flooding.host_port) as stalled:
        stalled.recv(1)  # the flood runs; from now on nobody reads it
        for _ in range(20):  # while it is stuck, other connections go on
            with loopback(echoing.host_port) as conn:
                conn.sendall(b"ping")
                conn.shutdown(socket.SHUT_WR)
                assert read_all(conn) == b"pingbye"


def test_closing_a_forward_stops_listening_and_ends_its_connections(
    forward: Callable[[Handler], Forward],
) -> None:
    relay = forward(echo_then_bye)
    conn = loopback(relay.host_port)
    conn.sendall(b"x")
    assert conn.recv(1) == b"x"
    relay.close()
    with conn, contextlib.suppress(ConnectionResetError):  # ended: EOF or reset
        assert conn.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        loopback(relay.host_port)


def test_a_taken_host_port_is_a_conflict_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(
            frames.OpError, match=f"host port {port} on 127.0.0.1 is already in use"
        ) as caught:
            Forward.bind(port, 80, loopback)
    assert caught.value.code == "conflict"


def test_a_guest_port_nobody_listens_on_closes_the_connection() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_port = unused.getsockname()[1]  # bound, never listening: connects are refused
        relay = Forward.bind(None, dead_port, loopback)
        relay.start()
        try:
            with loopback(relay.host_port) as conn:
                assert read_all(conn) == b""
        finally:
            relay.close()


# --- into a VM's namespace, through its real filter ---------------------------------------------


@needs_namespaces(nft=True)
def test_the_vm_namespace_path_gets_through_the_vm_table(netns_sandbox: int) -> None:
    """This thread's namespace stands for the host; `vm` holds the TAP's place (tap0, the
    gateway 172.16.0.1, pyro's table with its input policy drop) and `guest` the guest's
    address 172.16.0.2 at the end of a veth."""
    from pyroute2 import IPRoute

    with netns.throwaway_namespace() as vm, netns.throwaway_namespace() as guest:
        with netns.entered(vm), IPRoute() as ipr:
            ipr.link("add", ifname="tap0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": guest})
            tap = ipr.link_lookup(ifname="tap0")[0]
            ipr.addr("add", index=tap, address="172.16.0.1", prefixlen=30)
            ipr.link("set", index=tap, state="up")
            rules.load(rules.vm_table(AllowList.parse([])))
        with netns.entered(guest), IPRoute() as ipr:
            eth = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth, address="172.16.0.2", prefixlen=30)
            for index in (eth, ipr.link_lookup(ifname="lo")[0]):
                ipr.link("set", index=index, state="up")
        server = Server(echo_then_bye, host="172.16.0.2", ns=guest)
        relay = Forward.bind(None, server.port, netns_connector(lambda: vm, "172.16.0.2"))
        relay.start()
        try:
            with loopback(relay.host_port) as conn:
                conn.sendall(b"through the filter")
                conn.shutdown(socket.SHUT_WR)
                assert read_all(conn) == b"through the filterbye"
        finally:
            relay.close()
            server.close()


# --- ports.* against a real agent ---------------------------------------------------------------

PY = shlex.quote(sys.executable)


def http_service(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "web",
        "command": f"exec {PY} -m http.server {port} --bind 127.0.0.1",
        "readiness": {"type": "tcp", "address": f"127.0.0.1:{port}"},
        "ready_timeout": 60,
        "ready_interval_ms": 50,
        **extra,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int) -> bytes:
    return http_get(port, WAIT)


def refused(port: int) -> bool:
    return published_refused(port, WAIT)


@pytest.fixture
def ports() -> Iterator[tuple[ServicePorts, GuestClient]]:
    with short_workdir("pyro-ports-") as workdir:
        running = start_agent(Path(workdir))
        own = OwnClient(Path(running.socket_path))
        published = ServicePorts(loopback, own)
        client = GuestClient.connect_unix(running.socket_path, timeout=WAIT)
        yield published, client
        published.close_all()
        for record in agent_services.list_services(client):
            if record.state == "running":
                agent_services.stop_service(client, record.name, grace=0)
        client.close()
        stop_agent(running, forbid_traceback=True)


def test_a_published_service_is_reached_until_it_exits_and_then_its_port_closes(
    ports: tuple[ServicePorts, GuestClient],
) -> None:
    published, client = ports
    guest_port = free_port()
    result = published.handle("ports.publish", {"start": http_service(guest_port),
                                                "ports": [{"guest_port": guest_port}]})  # fmt: skip
    assert result["service"]["state"] == "running"
    (port,) = result["published_ports"]
    assert port["guest_port"] == guest_port and port["host_port"] != guest_port
    assert get(port["host_port"]).startswith(b"HTTP/1.0 200")
    listed = published.handle("ports.list", {})["services"]
    assert listed == {"web": {"run_id": result["service"]["run_id"], "published_ports": [port]}}
    # Status and logs leave it alone.
    agent_services.service_status(client, "web")
    agent_services.service_logs(client, "web", tail_lines=10)
    assert get(port["host_port"]).startswith(b"HTTP/1.0 200")
    # The service dies by itself: the watcher closes the port, nobody polls.
    os.kill(result["service"]["pid"], 9)
    wait_until(lambda: refused(port["host_port"]), "the port to close")
    assert published.handle("ports.list", {})["services"] == {}


def test_ports_close_on_request_and_with_the_vm(ports: tuple[ServicePorts, GuestClient]) -> None:
    published, client = ports
    guest_port = free_port()
    twice = [{"guest_port": guest_port}, {"guest_port": guest_port}]
    result = published.publish({"start": http_service(guest_port), "ports": twice})
    first, second = (p["host_port"] for p in result["published_ports"])
    run_id = result["service"]["run_id"]
    assert published.handle("ports.close", {"name": "web", "run_id": "0" * 16}) == {"closed": 0}
    assert published.handle("ports.close", {"name": "web", "run_id": run_id}) == {"closed": 2}
    assert refused(first) and refused(second)
    agent_services.stop_service(client, "web")
    again = published.publish({"start": http_service(guest_port),
                               "ports": [{"guest_port": guest_port}]})  # fmt: skip
    (port,) = again["published_ports"]
    published.close_all()
    assert refused(port["host_port"])


def test_a_taken_host_port_starts_nothing(ports: tuple[ServicePorts, GuestClient]) -> None:
    published, client = ports
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        host_port = taken.getsockname()[1]
        wanted = [{"guest_port": 80}, {"guest_port": 81, "host_port": host_port}]
        request = {"start": http_service(free_port()), "ports": wanted}
        with pytest.raises(frames.OpError, match=f"host port {host_port}") as caught:
            published.handle("ports.publish", request)
    assert caught.value.code == "conflict"
    assert agent_services.list_services(client) == []  # the service never started
    assert published.list() == {}


def test_a_failed_start_keeps_no_port_and_a_running_name_is_a_conflict(
    ports: tuple[ServicePorts, GuestClient],
) -> None:
    published, client = ports
    failed = published.publish({"start": {"name": "bad", "command": "exit 4",
                                          "readiness": {"type": "file", "path": "never"}},
                                "ports": [{"guest_port": 80}]})  # fmt: skip
    assert failed["service"]["state"] == "failed" and failed["published_ports"] == []
    agent_services.start_service(client, {"name": "busy", "command": "exec sleep 100"})
    with pytest.raises(frames.OpError, match="already running") as caught:
        published.publish({"start": {"name": "busy", "command": "true"},
                           "ports": [{"guest_port": 80}]})  # fmt: skip
    assert caught.value.code == "conflict" and published.list() == {}


def test_bad_requests_and_a_vm_without_network(ports: tuple[ServicePorts, GuestClient]) -> None:
    published, _ = ports
    for params in ({"start": {"name": "x"}}, {"start": "x", "ports": []},
                   {"start": http_service(1), "ports": [{"guest_port": 0}]}):  # fmt: skip
        with pytest.raises(frames.OpError) as caught:
            published.handle("ports.publish", params)
        assert caught.value.code == frames.ERR_INVALID_ARGUMENT
    with pytest.raises(frames.OpError) as caught:
        published.handle("ports.nope", {})
    assert caught.value.code == frames.ERR_UNKNOWN_OP
    offline = ServicePorts(None, OwnClient(Path("/nonexistent")))
    with pytest.raises(frames.OpError, match="egress\\+published-ports") as caught:
        offline.publish({"start": http_service(1), "ports": [{"guest_port": 80}]})
    assert str(caught.value) == NO_NETWORK


def test_adopt_relays_a_running_service_again_until_it_ends(
    ports: tuple[ServicePorts, GuestClient],
) -> None:
    # As after a resume: the service runs, its ports were bound by a supervisor now gone.
    published, client = ports
    guest_port, host_port = free_port(), free_port()
    record = agent_services.start_service(client, http_service(guest_port))
    params = {"name": "web", "run_id": record.run_id,
              "ports": [{"guest_port": guest_port, "host_port": host_port}]}  # fmt: skip
    adopted = published.handle("ports.adopt", params)
    assert adopted["published_ports"][0]["host_port"] == host_port
    assert get(host_port).startswith(b"HTTP/1.0 200")
    with pytest.raises(frames.OpError, match="has published ports"):
        published.handle("ports.adopt", params)
    os.kill(record.pid, 9)
    wait_until(lambda: refused(host_port), "the adopted port to close")
    # a run that has already ended gets its ports closed at once
    published.handle("ports.adopt", params)
    wait_until(lambda: refused(host_port), "the port of an ended run to close")
