"""The fake internet itself (framework/fake_internet.py): what the pyro-host namespace reaches,
what it cannot, the route guard, and a teardown that leaves nothing, even after a failed setup."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from framework import fake_internet as harness
from framework.fake_internet import ADDRESSES, FakeInternet
from framework.waiting import WAIT

pytestmark = pytest.mark.integration

# Helpers for the expression a probe prints; run inside the pyro-host namespace.
PROBE_PRELUDE = """
import http.client, json, socket
import dns.message, dns.query, dns.rcode

def get(host, port=80):
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/any/path")
    reply = conn.getresponse()
    return [reply.status, reply.read().decode()]

def echo(host, data):
    with socket.create_connection((host, 7), timeout=5) as sock:
        sock.sendall(data.encode())
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(4096), b"")).decode()

def resolve(server, name, rdtype="A", via=dns.query.udp):
    reply = via(dns.message.make_query(name, rdtype), server, timeout=5)
    return [dns.rcode.to_text(reply.rcode()), [r.to_text() for r in reply.answer]]

def connect(host, port):
    try:
        socket.create_connection((host, port), timeout=1).close()
        return "connected"
    except OSError as exc:
        return repr(exc)
"""


def probe(net: FakeInternet, expression: str) -> Any:
    """The value of `expression` (JSON), evaluated by a Python inside the pyro-host namespace."""
    code = f"{PROBE_PRELUDE}\nprint(json.dumps({expression}))"
    done = net.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def named_netns() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def root_links() -> set[str]:
    return {name for _, name in socket.if_nameindex()}


@pytest.mark.parametrize(
    ("address", "port", "body"),
    [
        (ADDRESSES.web, 80, "web-ok\n"),
        (ADDRESSES.other, 80, "other-ok\n"),
        # Only routed addresses to the pyro host: keeping guests from them is pyro's job.
        (ADDRESSES.private, 80, "private-ok\n"),
        (ADDRESSES.metadata, 80, "metadata-ok\n"),
        (ADDRESSES.host, 8080, "host-ok\n"),
        (ADDRESSES.loopback, 8080, "loopback-ok\n"),
    ],
)
def test_http_servers_answer_in_the_pyro_host(
    fake_internet: FakeInternet, address: str, port: int, body: str
) -> None:
    assert probe(fake_internet, f"get({address!r}, {port})") == [200, body]


def test_echo_server_echoes_until_end_of_file(fake_internet: FakeInternet) -> None:
    assert probe(fake_internet, f"echo({ADDRESSES.echo!r}, 'hello\\n' * 3)") == "hello\n" * 3


def test_dns_answers_and_counts_queries(fake_internet: FakeInternet) -> None:
    fake_internet.reset_queries()
    answer = probe(fake_internet, f"resolve({ADDRESSES.dns!r}, 'web.pyro.test')")
    assert answer == ["NOERROR", ["web.pyro.test. 60 IN A 203.0.113.20"]]
    assert fake_internet.queries("web.pyro.test") == 1
    assert fake_internet.queries("WEB.pyro.test.", "A") == 1
    assert fake_internet.queries("web.pyro.test", "AAAA") == 0
    assert fake_internet.queries("other.pyro.test") == 0


def test_dns_over_tcp_answers_an_alias_with_its_chain(fake_internet: FakeInternet) -> None:
    expression = f"resolve({ADDRESSES.dns!r}, 'alias.pyro.test', via=dns.query.tcp)"
    assert probe(fake_internet, expression) == [
        "NOERROR",
        ["alias.pyro.test. 60 IN CNAME web.pyro.test.", "web.pyro.test. 60 IN A 203.0.113.20"],
    ]


def test_dns_denies_unknown_names_and_has_no_aaaa(fake_internet: FakeInternet) -> None:
    fake_internet.reset_queries()
    nope, aaaa = "'nope.pyro.test'", "'web.pyro.test', 'AAAA'"
    expression = f"[resolve({ADDRESSES.dns!r}, {nope}), resolve({ADDRESSES.dns!r}, {aaaa})]"
    assert probe(fake_internet, expression) == [["NXDOMAIN", []], ["NOERROR", []]]
    assert fake_internet.queries("nope.pyro.test") == 1
    assert fake_internet.queries("web.pyro.test", "AAAA") == 1
    assert fake_internet.queries("web.pyro.test", "A") == 0


def test_the_real_world_is_out_of_reach(fake_internet: FakeInternet) -> None:
    # The fake internet has no route onwards, and does not forward: the SYN goes nowhere.
    assert probe(fake_internet, "connect('1.1.1.1', 53)") != "connected"


@pytest.mark.parametrize(
    "route",
    [
        {"dst": "198.51.100.0/24", "gateway": ADDRESSES.gateway},
        {"dst": "198.51.100.0/24", "gateway": ADDRESSES.gateway, "table": 100},
    ],
)
def test_route_guard_fails_on_anyone_elses_route(
    fake_internet: FakeInternet, route: dict[str, Any]
) -> None:
    fake_internet.assert_routes_are_ours()
    with fake_internet.host_iproute() as ipr:
        ipr.route("add", **route)
        try:
            with pytest.raises(AssertionError, match=r"foreign: unicast 198\.51\.100\.0/24 via"):
                fake_internet.assert_routes_are_ours()
        finally:
            ipr.route("del", **route)
    fake_internet.assert_routes_are_ours()


def test_route_guard_fails_without_the_default_route(fake_internet: FakeInternet) -> None:
    default = {"dst": "0.0.0.0/0", "gateway": ADDRESSES.gateway}
    with fake_internet.host_iproute() as ipr:
        ipr.route("del", **default)
        try:
            with pytest.raises(AssertionError, match=r"missing: unicast 0\.0\.0\.0/0 via"):
                fake_internet.assert_routes_are_ours()
        finally:
            ipr.route("add", **default)
    fake_internet.assert_routes_are_ours()


def test_route_guard_leaves_connected_routes_of_pyros_links_to_pyro(
    fake_internet: FakeInternet,
) -> None:
    with fake_internet.host_iproute() as ipr:
        ipr.link("add", ifname="pyvtest0", kind="veth", peer={"ifname": "pyvtest1"})
        try:
            for name in ("pyvtest0", "pyvtest1"):
                [index] = ipr.link_lookup(ifname=name)
                ipr.link("set", index=index, state="up")
            [index] = ipr.link_lookup(ifname="pyvtest0")
            ipr.addr("add", index=index, address="10.200.0.1", prefixlen=30)
            fake_internet.assert_routes_are_ours()
            ipr.route("add", dst="10.201.0.0/24", gateway="10.200.0.2")
            with pytest.raises(AssertionError, match=r"foreign: unicast 10\.201\.0\.0/24 via"):
                fake_internet.assert_routes_are_ours()
        finally:
            ipr.link("del", index=ipr.link_lookup(ifname="pyvtest0")[0])
    fake_internet.assert_routes_are_ours()
    assert "pyvtest0" not in fake_internet.links_in_host_ns()


def test_teardown_leaves_nothing() -> None:
    netns_before, links_before = named_netns(), root_links()
    with harness.fake_internet() as net:
        assert {net.host_ns, net.inet_ns} <= named_netns()
        assert sorted(net.links_in_host_ns()) == sorted(["lo", net.uplink])
        assert net.nft_ruleset() == []
        assert net.new_named_netns() == []
    assert (named_netns(), root_links()) == (netns_before, links_before)


def test_a_failed_setup_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "broken_servers.py"
    broken.write_text("import sys\nsys.exit('broken on purpose')\n")
    monkeypatch.setattr(harness, "SERVERS_SCRIPT", broken)
    netns_before, links_before = named_netns(), root_links()
    with pytest.raises(pytest.fail.Exception, match="broken on purpose"), harness.fake_internet():
        pytest.fail("the fake internet was built with broken servers")
    assert (named_netns(), root_links()) == (netns_before, links_before)
