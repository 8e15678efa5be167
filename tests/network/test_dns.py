"""The guest's DNS forwarder against a fake resolver, all on real loopback sockets."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from framework.waiting import WAIT, wait_until
from pyro_mcp.errors import HostRequirementError, InvalidArgumentError
from pyro_mcp.network import dns as forwarder_module
from pyro_mcp.network.allowlist import AllowList
from pyro_mcp.network.dns import DnsForwarder, host_upstreams, upstreams_from

Address = tuple[str, int]
LOCAL = "127.0.0.1"


def bound_pair() -> tuple[socket.socket, socket.socket, Address]:
    """A UDP socket and a listening TCP socket on the same loopback port."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((LOCAL, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(udp.getsockname())
        except OSError:  # the TCP port is taken: try another
            udp.close()
            tcp.close()
            continue
        tcp.listen()
        return udp, tcp, udp.getsockname()
    raise AssertionError("no loopback port free for both UDP and TCP")


def read_framed(sock: socket.socket) -> bytes:
    size = int.from_bytes(sock.recv(2, socket.MSG_WAITALL), "big")
    return sock.recv(size, socket.MSG_WAITALL)


def records(name: str) -> list[dns.rrset.RRset]:
    """What the fake resolver knows: www.* is a CNAME, big.* has a huge TTL, the rest an A."""
    if name.startswith("www."):
        target = "edge.cdn.example.net."
        return [
            dns.rrset.from_text(name, 60, "IN", "CNAME", target),
            dns.rrset.from_text(target, 5, "IN", "A", "192.0.2.7", "192.0.2.8"),
            dns.rrset.from_text("elsewhere.example.org.", 300, "IN", "A", "198.51.100.9"),
        ]
    if name.startswith("big."):
        return [dns.rrset.from_text(name, 10**6, "IN", "A", "192.0.2.2")]
    return [dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.1")]


class FakeUpstream:
    """A resolver on loopback (UDP and TCP) that answers from `records`, or stays silent."""

    def __init__(self, *, silent: bool = False, truncate: bool = False) -> None:
        self.udp, self.tcp, self.address = bound_pair()
        self.silent = silent
        self.truncate = truncate  # UDP answers come back empty with TC set
        self.seen: list[tuple[str, str, str]] = []  # (transport, name, type)
        self.sent: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-upstream", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self.udp.close()
        self.tcp.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.udp, self.tcp], [], [], 0.05)
            if self.udp in readable:
                wire, peer = self.udp.recvfrom(65535)
                reply = self._reply(wire, tcp=False)
                if reply is not None:
                    self.udp.sendto(reply, peer)
            if self.tcp in readable:
                conn, _ = self.tcp.accept()
                with conn:
                    conn.settimeout(WAIT)
                    reply = self._reply(read_framed(conn), tcp=True)
                    if reply is not None:
                        conn.sendall(len(reply).to_bytes(2, "big") + reply)

    def _reply(self, wire: bytes, *, tcp: bool) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        kind = dns.rdatatype.to_text(question.rdtype)
        self.seen.append(("tcp" if tcp else "udp", question.name.to_text(), kind))
        if self.silent:
            return None
        response = dns.message.make_response(query)
        if self.truncate and not tcp:
            response.flags |= dns.flags.TC
        else:
            response.answer = records(question.name.to_text())
        self.sent.append(response.to_wire())
        return self.sent[-1]


@pytest.fixture
def upstream_factory() -> Iterator[Callable[..., FakeUpstream]]:
    made: list[FakeUpstream] = []

    def make(**options: bool) -> FakeUpstream:
        made.append(FakeUpstream(**options))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


@pytest.fixture
def upstream(upstream_factory: Callable[..., FakeUpstream]) -> FakeUpstream:
    return upstream_factory()


class Learned:
    """A `learn` callback that records its calls and can hold the forwarder inside it."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, int]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.error: Exception | None = None

    def __call__(self, addresses: list[tuple[str, int]]) -> None:
        self.calls.append(addresses)
        self.entered.set()
        self.release.wait(WAIT)
        if self.error is not None:
            raise self.error


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[DnsForwarder, Address]]]:
    made: list[DnsForwarder] = []

    def start(upstreams: list[FakeUpstream], **options: Any) -> tuple[DnsForwarder, Address]:
        udp, tcp, address = bound_pair()
        forwarder = DnsForwarder(
            udp,
            tcp,
            [fake.address for fake in upstreams],
            new_socket=lambda kind: socket.socket(socket.AF_INET, kind),
            **options,
        )
        forwarder.start()
        made.append(forwarder)
        return forwarder, address

    yield start
    for forwarder in made:
        forwarder.close()


def ask(address: Address, name: str, kind: str = "A", *, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, kind)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, address[0], port=address[1], timeout=WAIT)


def a_records(reply: dns.message.Message) -> set[str]:
    return {
        rd.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset
    }


def dns_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pyro-dns")]


# --- forwarding ---------------------------------------------------------------------------


def test_without_an_allowlist_every_name_is_forwarded_over_udp_and_tcp(
    upstream: FakeUpstream, serve: Callable[..., Any]
) -> None:
    learned = Learned()
    _, address = serve([upstream], learn=learned)
    over_udp = ask(address, "anything.test.")
    over_tcp = ask(address, "other.test.", tcp=True)
    assert over_udp.rcode() == over_tcp.rcode() == dns.rcode.NOERROR
    assert a_records(over_udp) == a_records(over_tcp) == {"192.0.2.1"}
    assert upstream.seen == [("udp", "anything.test.", "A"), ("tcp", "other.test.", "A")]
    assert learned.calls == []


def test_a_truncated_udp_answer_is_passed_through_as_upstream_sent_it(
    upstream_factory: Callable[..., FakeUpstream], serve: Callable[..., Any]
) -> None:
    upstream = upstream_factory(truncate=True)
    _, address = serve([upstream])
    query = dns.message.make_query("large.test.", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        client.sendto(query.to_wire(), address)
        reply = client.recv(65535)
    assert reply == upstream.sent[0]
    assert dns.message.from_wire(reply).flags & dns.flags.TC


def test_a_silent_first_upstream_falls_back_to_the_second(
    upstream_factory: Callable[..., FakeUpstream],
    serve: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(forwarder_module, "UPSTREAM_TIMEOUT_S", 0.5)
    silent, working = upstream_factory(silent=True), upstream_factory()
    _, address = serve([silent, working])
    assert a_records(ask(address, "fallback.test.")) == {"192.0.2.1"}
    assert silent.seen == working.seen == [("udp", "fallback.test.", "A")]


def test_no_upstream_answering_gives_servfail(
    upstream_factory: Callable[..., FakeUpstream],
    serve: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(forwarder_module, "UPSTREAM_TIMEOUT_S", 0.3)
    silent = [upstream_factory(silent=True), upstream_factory(silent=True)]
    _, address = serve(silent)
    assert ask(address, "void.test.").rcode() == dns.rcode.SERVFAIL
    assert all(fake.seen == [("udp", "void.test.", "A")] for fake in silent)


def test_aaaa_gets_an_empty_answer_without_asking_upstream(
    upstream: FakeUpstream, serve: Callable[..., Any]
) -> None:
    _, address = serve([upstream])
    for tcp in (False, True):
        reply = ask(address, "v6.test.", "AAAA", tcp=tcp)
        assert (reply.rcode(), reply.answer) == (dns.rcode.NOERROR, [])
    assert upstream.seen == []


# --- the allowlist ------------------------------------------------------------------------


def test_an_allowed_name_is_learned_before_the_guest_gets_its_answer(
    upstream: FakeUpstream, serve: Callable[..., Any]
) -> None:
    learned = Learned()
    learned.release.clear()
    _, address = serve([upstream], allowlist=AllowList.parse(["api.test.org"]), learn=learned)
    query = dns.message.make_query("API.test.org.", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(query.to_wire(), address)
        assert learned.entered.wait(WAIT)
        assert select.select([client], [], [], 0.2)[0] == []  # held inside learn: no answer yet
        learned.release.set()
        client.settimeout(WAIT)
        reply = dns.message.from_wire(client.recv(65535))
    assert a_records(reply) == {"192.0.2.1"}
    assert learned.calls == [[("192.0.2.1", 300)]]


def test_a_wildcard_name_learns_its_cname_targets_addresses_with_clamped_ttls(
    upstream: FakeUpstream, serve: Callable[..., Any]
) -> None:
    learned = Learned()
    _, address = serve([upstream], allowlist=AllowList.parse(["*.example.com"]), learn=learned)
    through_cname = ask(address, "www.example.com.")
    huge_ttl = ask(address, "big.example.com.", tcp=True)
    assert a_records(through_cname) == {"192.0.2.7", "192.0.2.8", "198.51.100.9"}
    assert a_records(huge_ttl) == {"192.0.2.2"}
    # The unrelated A record is passed on but not learned: it is not the question's answer.
    assert [sorted(call) for call in learned.calls] == [
        [("192.0.2.7", 30), ("192.0.2.8", 30)],
        [("192.0.2.2", 86400)],
    ]


def test_a_name_not_allowed_is_refused_without_asking_upstream(
    upstream: FakeUpstream, serve: Callable[..., Any]
) -> None:
    learned = Learned()
    _, address = serve([upstream], allowlist=AllowList.parse(["*.example.com"]), learn=learned)
    for name, kind, tcp in [
        ("example.com.", "A", False),  # the wildcard covers only names below it
        ("evil\\.example.com.", "A", False),  # one label "evil.example" under com.
        ("evil.test.", "AAAA", False),
        ("evil.test.", "TXT", True),
    ]:
        assert ask(address, name, kind, tcp=tcp).rcode() == dns.rcode.REFUSED
    assert upstream.seen == []
    assert learned.calls == []


def test_a_failing_learn_answers_servfail_instead_of_the_addresses(
    upstream: FakeUpstream, serve: Callable[..., Any]
) -> None:
    learned = Learned()
    learned.error = RuntimeError("nft is gone")
    _, address = serve([upstream], allowlist=AllowList.parse(["api.test.org"]), learn=learned)
    reply = ask(address, "api.test.org.")
    assert (reply.rcode(), reply.answer) == (dns.rcode.SERVFAIL, [])
    assert learned.calls == [[("192.0.2.1", 300)]]


def test_set_allowlist_changes_the_answer_to_the_next_query(
    upstream: FakeUpstream, serve: Callable[..., Any]
) -> None:
    learned = Learned()
    forwarder, address = serve([upstream], learn=learned)
    assert ask(address, "api.test.org.").rcode() == dns.rcode.NOERROR
    forwarder.set_allowlist(AllowList.parse(["other.test.org"]))
    assert ask(address, "api.test.org.").rcode() == dns.rcode.REFUSED
    forwarder.set_allowlist(AllowList.parse([]))  # empty: every name again, nothing learned
    assert ask(address, "api.test.org.").rcode() == dns.rcode.NOERROR
    assert len(upstream.seen) == 2
    assert learned.calls == []


# --- hostile input and shutting down ------------------------------------------------------


def test_bad_packets_are_dropped_or_answered_and_serving_goes_on(
    upstream: FakeUpstream, serve: Callable[..., Any]
) -> None:
    _, address = serve([upstream])
    query = dns.message.make_query("fine.test.", "A")
    two_questions = dns.message.make_query("one.test.", "A")
    two_questions.question.append(query.question[0])
    notify = dns.message.make_query("fine.test.", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    a_response = dns.message.make_response(query).to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(WAIT)
        for junk in (b"\x00", b"\xff" * 40, a_response):
            client.sendto(junk, address)
        for message, rcode in [
            (two_questions, dns.rcode.FORMERR),
            (notify, dns.rcode.NOTIMP),
            (query, dns.rcode.NOERROR),
        ]:
            client.sendto(message.to_wire(), address)
            reply = dns.message.from_wire(client.recv(65535))
            assert (reply.id, reply.rcode()) == (message.id, rcode)
    with socket.create_connection(address, timeout=WAIT) as conn:
        conn.sendall(b"\x00\x03abc")
        assert conn.recv(1) == b""  # closed, not answered
    assert upstream.seen == [("udp", "fine.test.", "A")]


def test_close_ends_every_thread_and_closes_the_sockets(
    upstream_factory: Callable[..., FakeUpstream],
    serve: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Long waits, so the query and the idle connection are surely in flight when close() comes.
    monkeypatch.setattr(forwarder_module, "UPSTREAM_TIMEOUT_S", 600.0)
    monkeypatch.setattr(forwarder_module, "TCP_READ_TIMEOUT_S", 600.0)
    silent = upstream_factory(silent=True)
    forwarder, address = serve([silent])
    udp, tcp = forwarder._udp, forwarder._tcp
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        socket.create_connection(address, timeout=WAIT),  # an idle guest connection
    ):
        client.sendto(dns.message.make_query("slow.test.", "A").to_wire(), address)
        wait_until(lambda: silent.seen != [], "the query to reach the upstream")
        wait_until(lambda: len(dns_threads()) == 4, "listeners, the query and the connection")
        forwarder.close()
        forwarder.close()
    wait_until(lambda: dns_threads() == [], "the forwarder's threads to end")
    assert udp.fileno() == tcp.fileno() == -1


def test_close_before_start_closes_the_sockets() -> None:
    udp, tcp, _ = bound_pair()
    forwarder = DnsForwarder(
        udp, tcp, [(LOCAL, 53)], new_socket=lambda kind: socket.socket(socket.AF_INET, kind)
    )
    forwarder.close()
    forwarder.start()
    assert (udp.fileno(), tcp.fileno(), dns_threads()) == (-1, -1, [])


# --- choosing upstreams -------------------------------------------------------------------

RESOLV_CONF = """\
# written by hand
; old style comment
search example.com
nameserver ::1
nameserver fe80::1%eth0
nameserver 192.0.2.53
options edns0
nameserver 198.51.100.1  # trailing words are ignored
nameserver 192.0.2.53
"""


def test_upstreams_from_reads_the_env_value_with_ports_before_resolv_conf() -> None:
    value = " 192.0.2.1:5353, 198.51.100.7 ,192.0.2.1:5353"
    assert upstreams_from(value, RESOLV_CONF) == [("192.0.2.1", 5353), ("198.51.100.7", 53)]


def test_upstreams_from_falls_back_to_ipv4_nameservers_of_resolv_conf() -> None:
    expected = [("192.0.2.53", 53), ("198.51.100.1", 53)]
    assert upstreams_from(None, RESOLV_CONF) == upstreams_from("  ", RESOLV_CONF) == expected


@pytest.mark.parametrize(
    "value", ["dns.google", "192.0.2.1:", "192.0.2.1:0", "192.0.2.1:65536", "192.0.2.1,,", "::1"]
)
def test_upstreams_from_rejects_a_malformed_env_value(value: str) -> None:
    with pytest.raises(InvalidArgumentError, match="PYRO_DNS_UPSTREAM"):
        upstreams_from(value, RESOLV_CONF)


def test_upstreams_from_without_any_ipv4_resolver_says_what_to_set() -> None:
    with pytest.raises(HostRequirementError) as caught:
        upstreams_from(None, "nameserver ::1\n# nameserver 192.0.2.1\n")
    assert caught.value.hint is not None and "PYRO_DNS_UPSTREAM" in caught.value.hint


def test_host_upstreams_prefers_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_DNS_UPSTREAM", "203.0.113.5:53")
    assert host_upstreams() == [("203.0.113.5", 53)]
