"""The DNS forwarder a VM's supervisor runs on the guest's gateway.

Queries arrive on sockets bound inside the VM's namespace and go to the host's resolvers
through sockets made in the host's namespace. With an allowlist only allowed names are
answered, and the IPv4 addresses of each answer are handed to `learn` (which opens them in
the VM's firewall) before the guest sees them: the guest can reach only what it resolved here.
The guest is hostile: every read has a deadline and a size bound, and work in flight is capped.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import logging
import math
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from dns.message import Message

from pyro_mcp.errors import HostRequirementError, InvalidArgumentError
from pyro_mcp.network.allowlist import AllowList

log = logging.getLogger("pyro.dns")

UPSTREAM_ENV = "PYRO_DNS_UPSTREAM"
RESOLV_CONF = "/etc/resolv.conf"
UPSTREAM_TIMEOUT_S = 2.0  # per upstream; a guest resolver gives up after ~5 s in all
TCP_READ_TIMEOUT_S = 5.0  # for each query on a guest's TCP connection
TCP_QUERIES_PER_CONN = 4
MAX_UDP_IN_FLIGHT = 64
MAX_TCP_CONNS = 16  # kept apart so idle TCP connections cannot starve UDP queries
MAX_MESSAGE = 65535
MIN_TTL = 30  # a short TTL must not close the firewall before the guest connects
MAX_TTL = 86400
MAX_CHAIN = 16  # CNAME hops followed when collecting addresses
CLOSE_WAIT_S = 1.0
_PLAIN_LABEL = re.compile(rb"[A-Za-z0-9_-]{1,63}")  # "_" for service names (_sip._tcp)

Address = tuple[str, int]
Learn = Callable[[list[tuple[str, int]]], None]  # (IPv4 address, TTL in seconds) pairs


class DnsForwarder:
    """Serves a guest's DNS on given sockets, forwarding to upstream resolvers in order."""

    def __init__(
        self,
        udp: socket.socket,
        tcp: socket.socket | None,
        upstreams: Sequence[Address],
        *,
        new_socket: Callable[[int], socket.socket],
        allowlist: AllowList | None = None,
        learn: Learn | None = None,
    ) -> None:
        self._udp = udp
        self._tcp = tcp
        self._upstreams = list(upstreams)
        self._new_socket = new_socket
        self._allowlist = allowlist
        self._learn = learn
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # Never drained: once written, every wait in every thread sees it readable and returns.
        self._wake_r, self._wake_w = socket.socketpair()
        self._threads: set[threading.Thread] = set()
        self._started = False
        self._udp_slots = threading.BoundedSemaphore(MAX_UDP_IN_FLIGHT)
        self._tcp_slots = threading.BoundedSemaphore(MAX_TCP_CONNS)

    def set_allowlist(self, allowlist: AllowList | None) -> None:
        """Replace the allowlist; queries that arrive afterwards use the new one."""
        with self._lock:
            self._allowlist = allowlist

    def start(self) -> None:
        """Serve in daemon threads (again or after close: nothing)."""
        with self._lock:
            if self._started or self._stopping.is_set():
                return
            self._started = True
        # Non-blocking: a datagram or connection that vanishes between poll and read must not
        # park the serving loop.
        self._udp.setblocking(False)
        self._spawn("pyro-dns-udp", self._serve_udp)
        if self._tcp is not None:
            self._tcp.setblocking(False)
            self._spawn("pyro-dns-tcp", self._serve_tcp)

    def close(self) -> None:
        """Stop serving and close the sockets given; threads end within about a second."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            threads = set(self._threads)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        deadline = time.monotonic() + CLOSE_WAIT_S
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()
        if any(thread.is_alive() for thread in threads):
            log.info("DNS forwarder threads still running after close")
            return  # they may still poll the wake socket; the collector closes it later
        self._wake_r.close()
        self._wake_w.close()

    # --- serving ---------------------------------------------------------------------------

    def _spawn(self, name: str, target: Callable[[], None]) -> bool:
        def run() -> None:
            try:
                target()
            finally:
                with self._lock:
                    self._threads.discard(thread)

        thread = threading.Thread(target=run, name=name, daemon=True)
        # Under the lock, so close() either sees this thread to join or it never starts.
        with self._lock:
            if self._stopping.is_set():
                return False
            self._threads.add(thread)
            thread.start()
        return True

    def _serve_udp(self) -> None:
        while self._ready(self._udp, None):
            try:
                wire, peer = self._udp.recvfrom(MAX_MESSAGE)
            except OSError:
                continue  # gone already (BlockingIOError), or an ICMP error from an earlier send
            if not self._udp_slots.acquire(blocking=False):
                log.debug("dropped a UDP query from %s: too many in flight", peer)
                continue
            if not self._spawn("pyro-dns-query", functools.partial(self._udp_query, wire, peer)):
                self._udp_slots.release()

    def _udp_query(self, wire: bytes, peer: Address) -> None:
        try:
            reply = self._answer(wire, tcp=False)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self._udp.sendto(reply, peer)
        finally:
            self._udp_slots.release()

    def _serve_tcp(self) -> None:
        assert self._tcp is not None
        while self._ready(self._tcp, None):
            try:
                conn, peer = self._tcp.accept()
            except BlockingIOError:
                continue  # the client gave up between poll and accept
            except OSError as exc:
                log.info("cannot accept a DNS connection: %s", exc)
                self._stopping.wait(0.1)  # e.g. out of descriptors: do not spin
                continue
            if not self._tcp_slots.acquire(blocking=False):
                log.debug("closed a TCP connection from %s: too many open", peer)
                conn.close()
                continue
            if not self._spawn("pyro-dns-conn", functools.partial(self._tcp_conn, conn)):
                self._tcp_slots.release()
                conn.close()

    def _tcp_conn(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(TCP_READ_TIMEOUT_S)  # bounds sendall; reads poll with deadlines
            for _ in range(TCP_QUERIES_PER_CONN):
                wire = self._read_framed(conn, time.monotonic() + TCP_READ_TIMEOUT_S)
                reply = None if wire is None else self._answer(wire, tcp=True)
                if reply is None:
                    return
                conn.sendall(len(reply).to_bytes(2, "big") + reply)
        except OSError:
            pass
        finally:
            conn.close()
            self._tcp_slots.release()

    # --- answering ---------------------------------------------------------------------------

    def _answer(self, wire: bytes, *, tcp: bool) -> bytes | None:
        """The reply to send back, or None to drop the query (or close its connection)."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # hostile input: whatever fails to parse is not a query we answer
            log.debug("dropped a packet that is not a DNS message")
            return None
        if query.flags & dns.flags.QR:
            return None
        if query.opcode() != dns.opcode.QUERY:
            return _reply(query, dns.rcode.NOTIMP)
        if len(query.question) != 1:
            return _reply(query, dns.rcode.FORMERR)
        question = query.question[0]
        with self._lock:
            allowlist = self._allowlist
        filtering = bool(allowlist)
        if allowlist and not allowlist.allows_name(_plain_name(question.name)):
            log.debug("refused %s: not on the allowlist", question.name)
            return _reply(query, dns.rcode.REFUSED)
        if question.rdtype == dns.rdatatype.AAAA:
            # No IPv6 route in the guest: an empty answer makes its resolver use A at once.
            return _reply(query, dns.rcode.NOERROR)
        forwarded = self._forward(wire, query, tcp=tcp)
        if forwarded is None:
            log.info("no upstream answered for %s", question.name)
            return _reply(query, dns.rcode.SERVFAIL)
        if filtering and not self._learned(forwarded, question.name):
            return _reply(query, dns.rcode.SERVFAIL)
        return forwarded

    def _learned(self, reply_wire: bytes, name: dns.name.Name) -> bool:
        """Hand the answer's addresses to `learn`; False when the guest must not see them."""
        try:
            reply = dns.message.from_wire(reply_wire)
        except Exception:  # addresses we cannot read would not be in the firewall
            log.debug("upstream reply did not parse; answering SERVFAIL")
            return False
        addresses = _chain_addresses(reply)
        if not addresses or self._learn is None:
            return True
        try:
            # Under the lock set_allowlist takes: a list swapped while upstream answered is
            # the one that decides, so no name it dropped is learnt after the swap.
            with self._lock:
                allowlist = self._allowlist
                if allowlist and not allowlist.allows_name(_plain_name(name)):
                    return False
                if allowlist:
                    self._learn(addresses)
        except Exception:
            # Not a refused name but a firewall that could not be updated: worth a warning.
            log.warning("learning %s failed; answering SERVFAIL", addresses, exc_info=True)
            return False
        return True

    def _forward(self, wire: bytes, query: Message, *, tcp: bool) -> bytes | None:
        ask = self._ask_tcp if tcp else self._ask_udp
        for upstream in self._upstreams:
            if self._stopping.is_set():
                return None
            try:
                sock = self._new_socket(socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
            except OSError as exc:
                log.info("cannot open a socket to reach %s: %s", upstream, exc)
                return None
            try:
                reply = ask(sock, upstream, wire, query)
            except OSError as exc:
                log.debug("upstream %s failed: %s", upstream, exc)
                reply = None
            finally:
                sock.close()
            if reply is not None:
                return reply
        return None

    def _ask_udp(
        self, sock: socket.socket, upstream: Address, wire: bytes, query: Message
    ) -> bytes | None:
        deadline = time.monotonic() + UPSTREAM_TIMEOUT_S
        sock.setblocking(False)
        sock.connect(upstream)  # the kernel then drops datagrams from anyone else
        sock.send(wire)
        while self._ready(sock, deadline):
            try:
                reply = sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                continue
            if _answers(query, reply):
                return reply
        return None

    def _ask_tcp(
        self, sock: socket.socket, upstream: Address, wire: bytes, query: Message
    ) -> bytes | None:
        deadline = time.monotonic() + UPSTREAM_TIMEOUT_S
        sock.setblocking(False)
        status = sock.connect_ex(upstream)
        if status not in (0, errno.EINPROGRESS):
            raise OSError(status, os.strerror(status))
        if not self._ready(sock, deadline, select.POLLOUT):
            return None
        status = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if status:
            raise OSError(status, os.strerror(status))
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        sock.sendall(len(wire).to_bytes(2, "big") + wire)
        reply = self._read_framed(sock, deadline)
        return reply if reply is not None and _answers(query, reply) else None

    # --- waiting and reading -----------------------------------------------------------------

    def _ready(
        self, sock: socket.socket, deadline: float | None, events: int = select.POLLIN
    ) -> bool:
        """Wait until `sock` is ready; False once the deadline passes or the forwarder closes."""
        poller = select.poll()
        try:
            poller.register(sock, events)
            poller.register(self._wake_r, select.POLLIN)
        except (OSError, ValueError):  # a socket closed under us
            return False
        while not self._stopping.is_set():
            timeout = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                timeout = math.ceil(left * 1000)
            if poller.poll(timeout):
                # The wake socket is only ever readable on close; anything else is `sock`
                # (an error or hang-up too: the read that follows reports it).
                return not self._stopping.is_set()
        return False

    def _read_framed(self, sock: socket.socket, deadline: float) -> bytes | None:
        """One length-prefixed DNS message from a stream, or None on EOF, timeout or close."""
        prefix = self._read_exact(sock, 2, deadline)
        if prefix is None:
            return None
        size = int.from_bytes(prefix, "big")
        return self._read_exact(sock, size, deadline) if size else None

    def _read_exact(self, sock: socket.socket, size: int, deadline: float) -> bytes | None:
        data = bytearray()
        while len(data) < size:
            if not self._ready(sock, deadline):
                return None
            try:
                chunk = sock.recv(size - len(data))
            except (BlockingIOError, TimeoutError):
                continue
            if not chunk:
                return None
            data += chunk
        return bytes(data)


def _chain_addresses(reply: Message) -> list[tuple[str, int]]:
    """The (IPv4 address, clamped TTL) pairs a reply gives for its question name, through
    any CNAME chain; A records for other names are not the answer and are left out."""
    if len(reply.question) != 1:
        return []
    name = reply.question[0].name
    found: dict[str, int] = {}
    seen: set[dns.name.Name] = set()
    while name not in seen and len(seen) < MAX_CHAIN:
        seen.add(name)
        rrset = reply.get_rrset(reply.answer, name, dns.rdataclass.IN, dns.rdatatype.A)
        if rrset is not None:
            ttl = min(max(rrset.ttl, MIN_TTL), MAX_TTL)
            for rdata in rrset:
                found[rdata.to_text()] = max(ttl, found.get(rdata.to_text(), 0))
        cname = reply.get_rrset(reply.answer, name, dns.rdataclass.IN, dns.rdatatype.CNAME)
        if not cname:
            break
        name = next(iter(cname)).target
    return list(found.items())


def _plain_name(name: dns.name.Name) -> str:
    """The name as dotted text; "" (on no list) when a label holds a dot or other bytes no
    host name has, since "evil\\.example.com" would otherwise pass for below example.com."""
    labels = [label for label in name.labels if label]
    if not all(_PLAIN_LABEL.fullmatch(label) for label in labels):
        return ""
    return b".".join(labels).decode("ascii")


def _answers(query: Message, reply: bytes) -> bool:
    """Whether upstream bytes are a reply to `query` (same id and question)."""
    try:
        message = dns.message.from_wire(reply, question_only=True)
    except Exception:
        return False
    return query.is_response(message)


def _reply(query: Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query, recursion_available=True)
    response.set_rcode(rcode)
    return response.to_wire()


# --- upstream resolvers --------------------------------------------------------------------


def upstreams_from(env_value: str | None, resolv_conf: str) -> list[Address]:
    """The resolvers to forward to: `PYRO_DNS_UPSTREAM` ("IP[:PORT],...") when set, else the
    IPv4 nameservers of resolv.conf's text."""
    if env_value is not None and env_value.strip():
        return _parse_env(env_value)
    found: list[Address] = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue  # comments (# or ;) and other options too
        try:
            address = ipaddress.IPv4Address(fields[1])
        except ValueError:
            continue  # IPv6: the upstream sockets are IPv4
        if (str(address), 53) not in found:
            found.append((str(address), 53))
    if not found:
        raise HostRequirementError(
            "the host's resolv.conf names no IPv4 nameserver for guests' DNS",
            hint=f"set {UPSTREAM_ENV}=IP[:PORT][,IP[:PORT]...] to the resolvers to use",
        )
    return found


def _parse_env(value: str) -> list[Address]:
    found: list[Address] = []
    for item in value.split(","):
        upstream = _parse_upstream(item.strip())
        if upstream is None:
            raise InvalidArgumentError(
                f"{UPSTREAM_ENV}={value!r}: {item.strip()!r} is not an IPv4 address[:port]",
                hint=f"set {UPSTREAM_ENV} to e.g. 192.0.2.53 or 192.0.2.53:5353,198.51.100.1",
            )
        if upstream not in found:
            found.append(upstream)
    return found


def _parse_upstream(text: str) -> Address | None:
    host, colon, port_text = text.partition(":")
    if colon and not port_text.isdigit():  # int() would take "+53", " 53" or "5_3"
        return None
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        return None
    port = int(port_text) if colon else 53
    return (str(address), port) if 1 <= port <= 65535 else None


def host_upstreams() -> list[Address]:
    """The host's resolvers: `PYRO_DNS_UPSTREAM`, else /etc/resolv.conf's IPv4 nameservers."""
    try:
        with open(RESOLV_CONF, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        text = ""
    return upstreams_from(os.environ.get(UPSTREAM_ENV), text)
