"""The fake internet's servers, run as a script inside one of its namespaces (see fake_internet.py).

`--role inet` serves the "public" servers, the private and metadata lookalikes and DNS;
`--role host` serves what a guest must not reach on the pyro host. The script prints `ready`
once every server is bound, then serves until its stdin closes (the harness ends, or dies).
This module is also where the harness takes its addresses, bodies and DNS names from.
"""

from __future__ import annotations

import argparse
import json
import os
import socketserver
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


@dataclass(frozen=True)
class Addresses:
    """Every address of the fake internet; `ADDRESSES` is the only instance."""

    host: str = "192.0.2.2"  # the pyro-host namespace's end of the uplink
    gateway: str = "192.0.2.1"  # the fake internet's end: the pyro host's default route
    echo: str = "203.0.113.10"
    web: str = "203.0.113.20"
    other: str = "203.0.113.30"  # public, but never allowlisted by the tests
    dns: str = "203.0.113.53"
    private: str = "10.99.0.10"  # RFC 1918
    metadata: str = "169.254.169.254"  # what clouds serve their instance metadata on
    loopback: str = "127.0.0.1"


ADDRESSES = Addresses()
UPLINK_PREFIX = 24
SERVER_ADDRESSES = (
    ADDRESSES.echo,
    ADDRESSES.web,
    ADDRESSES.other,
    ADDRESSES.dns,
    ADDRESSES.private,
    ADDRESSES.metadata,
)
ECHO_PORT = 7
HTTP_PORT = 80
DNS_PORT = 53
HOST_HTTP_PORT = 8080

INET_BODIES = {
    ADDRESSES.web: b"web-ok\n",
    ADDRESSES.other: b"other-ok\n",
    ADDRESSES.private: b"private-ok\n",
    ADDRESSES.metadata: b"metadata-ok\n",
}
HOST_BODIES = {ADDRESSES.host: b"host-ok\n", ADDRESSES.loopback: b"loopback-ok\n"}

DNS_TTL = 60
A_RECORDS = {
    "web.pyro.test": ADDRESSES.web,
    "echo.pyro.test": ADDRESSES.echo,
    "other.pyro.test": ADDRESSES.other,
    "private.pyro.test": ADDRESSES.private,
}
CNAME_RECORDS = {"alias.pyro.test": "web.pyro.test"}


def normal_name(name: str) -> str:
    """`name` as the query counts key it: lower case, no trailing dot."""
    return name.lower().rstrip(".")


class Zone:
    """The answers of the DNS server, and how often each name (and type) was asked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {}

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {name: dict(types) for name, types in self._counts.items()}

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def answer(self, wire: bytes) -> bytes | None:
        """The reply to the query `wire`; None for garbage, which gets no reply."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = normal_name(question.name.to_text())
        with self._lock:
            self._counts.setdefault(name, Counter())[dns.rdatatype.to_text(question.rdtype)] += 1
        self._fill(response, name, question.rdtype)
        return response.to_wire()

    def _fill(self, response: dns.message.Message, name: str, rdtype: int) -> None:
        if name in CNAME_RECORDS:
            target = CNAME_RECORDS[name]
            response.answer.append(_rrset(name, "CNAME", target + "."))
            if rdtype == dns.rdatatype.CNAME:
                return
            name = target
        if name not in A_RECORDS:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif rdtype == dns.rdatatype.A:
            response.answer.append(_rrset(name, "A", A_RECORDS[name]))


def _rrset(name: str, rdtype: str, value: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(name + ".", DNS_TTL, "IN", rdtype, value)


# --- servers ------------------------------------------------------------------------------


class TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True


class UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class HttpServer(ThreadingHTTPServer):
    def server_bind(self) -> None:
        # HTTPServer.server_bind asks DNS for our own name (getfqdn); in here nothing answers.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def http_server(address: str, port: int, body: bytes) -> HttpServer:
    """Answers 200 with `body` to a GET of any path."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return HttpServer((address, port), Handler)


def dns_servers(zone: Zone) -> list[socketserver.BaseServer]:
    """DNS over UDP and TCP on the DNS address."""

    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            if (reply := zone.answer(data)) is not None:
                sock.sendto(reply, self.client_address)

    class Tcp(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while len(prefix := self.rfile.read(2)) == 2:
                reply = zone.answer(self.rfile.read(int.from_bytes(prefix)))
                if reply is None:
                    return
                self.wfile.write(len(reply).to_bytes(2) + reply)

    address = (ADDRESSES.dns, DNS_PORT)
    return [UdpServer(address, Udp), TcpServer(address, Tcp)]


def control_server(path: str, zone: Zone) -> UnixServer:
    """One command a connection: `queries` (the counts, as JSON) or `reset`.

    A UNIX socket, so that the harness reaches it from any namespace.
    """

    class Control(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            command = self.rfile.readline().strip()
            if command == b"reset":
                zone.reset()
            reply = zone.counts() if command == b"queries" else {}
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    return UnixServer(path, Control)


def inet_servers(control: str) -> list[socketserver.BaseServer]:
    zone = Zone()
    servers: list[socketserver.BaseServer] = [TcpServer((ADDRESSES.echo, ECHO_PORT), Echo)]
    servers += [http_server(a, HTTP_PORT, body) for a, body in INET_BODIES.items()]
    return [*servers, *dns_servers(zone), control_server(control, zone)]


def host_servers() -> list[socketserver.BaseServer]:
    return [http_server(a, HOST_HTTP_PORT, body) for a, body in HOST_BODIES.items()]


# --- the script ---------------------------------------------------------------------------


def check_namespace(path: str) -> None:
    """Refuse to run anywhere but in the namespace bound at `path`: a sysctl is written next."""
    want, have = os.stat(path), os.stat("/proc/self/ns/net")
    if (want.st_dev, want.st_ino) != (have.st_dev, have.st_ino):
        sys.exit(f"fake_internet_servers: not inside the network namespace {path}")


def forwarding_off() -> None:
    # A new namespace may inherit forwarding from the host's (net.core.devconf_inherit_init_net).
    switch = Path("/proc/sys/net/ipv4/ip_forward")
    if switch.read_text().strip() != "0":
        switch.write_text("0\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=["inet", "host"], required=True)
    parser.add_argument("--netns", required=True, help="/run/netns/NAME this must run inside")
    parser.add_argument("--control", help="the UNIX socket of the DNS query counts (inet)")
    args = parser.parse_args(argv)
    if args.role == "inet" and not args.control:
        parser.error("--role inet needs --control")
    check_namespace(args.netns)
    if args.role == "inet":
        forwarding_off()
        servers = inet_servers(args.control)
    else:
        servers = host_servers()
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.buffer.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
