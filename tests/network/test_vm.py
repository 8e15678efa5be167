"""One VM's network as its supervisor runs it (VmNetwork), end to end but without a VM.

Each test runs in a throwaway namespace standing in for the host (`netns_sandbox`); the VM's
namespace is created from there, so its uplink's host end, the shared table and forwarding
all land in the sandbox. The host's resolver is a fake one on the sandbox's loopback: the DNS
forwarder reaches its upstreams through sockets of the host side. "The guest" is a socket
made inside the VM's namespace, asking the gateway 172.16.0.1, or (the guest's real way in,
through the VM table's filter) Ethernet frames written into the TAP as a VMM would.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from framework.sandbox_netns import (
    TEST_SLOTS,
    default_gateway_here,
    forwarding_here,
    holders_of,
    links_here,
    namespace_id,
    needs_namespaces,
    rules_here,
    set_forwarding_here,
    sets_here,
    tables_here,
)
from framework.waiting import WAIT, wait_until
from pyro_mcp.errors import ConflictError
from pyro_mcp.network import dns as dns_module
from pyro_mcp.network import links, netns
from pyro_mcp.network import vm as vm_module
from pyro_mcp.network.addressing import GATEWAY_IP, GATEWAY_MAC, GUEST_IP, GUEST_MAC, Uplink
from pyro_mcp.network.vm import NetworkPlan, VmNetwork

pytestmark = needs_namespaces(nft=True)

SLOT, OTHER_SLOT = TEST_SLOTS
UPLINK = Uplink.of(SLOT)
ALLOWED = ("allowed.example", "*.wild.example", "203.0.113.0/24")
# The fake resolver gives every name one A record: these names their own, any other ANY_OTHER.
ADDRESSES = {"allowed.example.": "192.0.2.10", "a.wild.example.": "192.0.2.11",
             "other.example.": "192.0.2.20"}  # fmt: skip
ANY_OTHER = "192.0.2.99"
TTL = 300


class FakeResolver:
    """The host's resolver on the sandbox's loopback (UDP); an answer can be held back."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.seen: list[str] = []
        self.holds: dict[str, threading.Event] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-resolver", daemon=True)
        self._thread.start()

    def hold(self, name: str) -> threading.Event:
        """Keep the answer for `name` until the returned event is set."""
        self.holds[name] = threading.Event()
        return self.holds[name]

    def close(self) -> None:
        self._stop.set()
        for event in self.holds.values():
            event.set()
        self._thread.join(WAIT)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.sock], [], [], 0.05)[0]:
                continue
            wire, peer = self.sock.recvfrom(65535)
            query = dns.message.from_wire(wire)
            name = query.question[0].name.to_text()
            self.seen.append(name)
            if name in self.holds:
                self.holds[name].wait(WAIT)
            response = dns.message.make_response(query)
            address = ADDRESSES.get(name, ANY_OTHER)
            response.answer = [dns.rrset.from_text(name, TTL, "IN", "A", address)]
            self.sock.sendto(response.to_wire(), peer)


@pytest.fixture
def resolver(netns_sandbox: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeResolver]:
    fake = FakeResolver()  # its socket is the sandbox's: made after the sandbox was entered
    monkeypatch.setenv(dns_module.UPSTREAM_ENV, "{}:{}".format(*fake.address))
    yield fake
    fake.close()


@pytest.fixture
def wired(resolver: FakeResolver) -> Iterator[Callable[..., VmNetwork]]:
    """Opens and wires VmNetworks in the sandbox; closes them and waits for their uplinks to go."""
    made: list[VmNetwork] = []

    def make(allow_hosts: tuple[str, ...] = ALLOWED, *, slot: int = SLOT) -> VmNetwork:
        vm = VmNetwork(NetworkPlan(slot, allow_hosts))
        made.append(vm)
        vm.open()
        # Off in the sandbox, so that seeing it on afterwards means wire() turned it on.
        set_forwarding_here("0")
        vm.wire()
        return vm

    yield make
    for vm in made:
        vm.close()
    for vm in made:
        wait_until(link_gone(vm.uplink.host_link), f"{vm.uplink.host_link} to go")


def link_gone(name: str) -> Callable[[], bool]:
    return lambda: name not in links_here()


def ask(vm: VmNetwork, name: str, rdtype: str = "A") -> dns.message.Message:
    """A DNS query from inside the VM's namespace to the gateway, as the guest makes it."""
    assert vm.ns_fd is not None
    with netns.entered(vm.ns_fd):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        return dns.query.udp(dns.message.make_query(name, rdtype), GATEWAY_IP, WAIT, sock=sock)


def a_records(reply: dns.message.Message) -> set[str]:
    return {rd.to_text() for rr in reply.answer if rr.rdtype == dns.rdatatype.A for rd in rr}


def in_vm[T](vm: VmNetwork, read: Callable[[], T]) -> T:
    assert vm.ns_fd is not None
    with netns.entered(vm.ns_fd):
        return read()


def learned(vm: VmNetwork) -> dict[str, int]:
    """address -> timeout of the VM's allow_dns set."""
    found = in_vm(vm, lambda: sets_here("pyro")["allow_dns"].get("elem", []))
    return {e["elem"]["val"]: e["elem"]["timeout"] for e in found}


def allowed_networks(vm: VmNetwork) -> list[Any]:
    return list(in_vm(vm, lambda: sets_here("pyro")["allow_net"].get("elem", [])))


def test_the_uplinks_host_end_appears_in_the_host_namespace_with_the_slots_address(
    wired: Callable[..., VmNetwork],
) -> None:
    assert UPLINK.host_link not in links_here()
    wired()
    host_end = links_here()[UPLINK.host_link]
    assert host_end["addresses"] == [f"{UPLINK.host_ip}/30"]
    assert host_end["up"] is True


def test_the_vm_namespace_holds_the_guests_gateway_and_the_uplink(
    wired: Callable[..., VmNetwork],
) -> None:
    vm = wired()
    found = in_vm(vm, links_here)
    assert set(found) == {"lo", "tap0", "up0"}
    assert found["tap0"]["addresses"] == [f"{GATEWAY_IP}/30"]
    assert found["tap0"]["mac"] == GATEWAY_MAC == "02:50:59:00:00:01"
    assert found["up0"]["addresses"] == [f"{UPLINK.vm_ip}/30"]
    assert all(found[name]["up"] for name in ("lo", "tap0", "up0"))
    assert in_vm(vm, default_gateway_here) == UPLINK.host_ip


def test_wiring_turns_forwarding_on_and_loads_a_table_on_each_side(
    wired: Callable[..., VmNetwork],
) -> None:
    vm = wired()
    assert (forwarding_here(), tables_here()) == ("1", ["inet pyro_host"])
    assert in_vm(vm, forwarding_here) == "1"
    assert in_vm(vm, tables_here) == ["inet pyro"]
    assert allowed_networks(vm) == [{"prefix": {"addr": "203.0.113.0", "len": 24}}]


def test_open_makes_the_tap_with_forwarding_off_until_wired(resolver: FakeResolver) -> None:
    # A new namespace copies the initial namespace's forwarding (on, on many hosts): the guest
    # must reach nothing before the filter is in, whatever the host does.
    vm = VmNetwork(NetworkPlan(SLOT, ALLOWED))
    vm.open()
    try:
        assert vm.tap_fd is not None and vm.forwarder is None
        assert in_vm(vm, links_here).keys() == {"lo", "tap0"}
        assert in_vm(vm, forwarding_here) == "0"
        assert in_vm(vm, tables_here) == []
        assert UPLINK.host_link not in links_here()
    finally:
        vm.close()


def test_an_allowed_name_is_answered_through_the_hosts_resolver_and_its_address_opened(
    wired: Callable[..., VmNetwork], resolver: FakeResolver
) -> None:
    vm = wired()
    reply = ask(vm, "allowed.example")
    assert reply.rcode() == dns.rcode.NOERROR
    assert a_records(reply) == {"192.0.2.10"}
    assert resolver.seen == ["allowed.example."]
    # Opened before the answer went out: no wait needed.
    assert learned(vm) == {"192.0.2.10": TTL}
    assert a_records(ask(vm, "a.wild.example")) == {"192.0.2.11"}
    assert learned(vm) == {"192.0.2.10": TTL, "192.0.2.11": TTL}


def test_a_name_off_the_list_is_refused_without_asking_the_resolver(
    wired: Callable[..., VmNetwork], resolver: FakeResolver
) -> None:
    vm = wired()
    for name in ("other.example", "wild.example", "allowed.example.evil.net"):
        assert ask(vm, name).rcode() == dns.rcode.REFUSED
    assert resolver.seen == []
    assert learned(vm) == {}


def test_set_allowlist_reloads_the_table_and_the_forwarder(
    wired: Callable[..., VmNetwork],
) -> None:
    vm = wired()
    assert a_records(ask(vm, "allowed.example")) == {"192.0.2.10"}
    vm.set_allowlist(["Other.Example.", "198.51.100.0/25"])
    assert vm.plan == NetworkPlan(SLOT, ("other.example", "198.51.100.0/25"))
    assert allowed_networks(vm) == [{"prefix": {"addr": "198.51.100.0", "len": 25}}]
    assert learned(vm) == {}  # what old names opened is closed again
    assert ask(vm, "allowed.example").rcode() == dns.rcode.REFUSED
    assert a_records(ask(vm, "other.example")) == {"192.0.2.20"}
    assert learned(vm) == {"192.0.2.20": TTL}


def test_clearing_the_allowlist_gives_plain_egress(wired: Callable[..., VmNetwork]) -> None:
    vm = wired()
    vm.set_allowlist([])
    assert vm.plan.allow_hosts == ()
    assert a_records(ask(vm, "anything.example")) == {ANY_OTHER}
    assert learned(vm) == {}  # plain egress opens no addresses one by one
    forward = in_vm(vm, lambda: rules_here("pyro")["forward"])
    assert any("@blocked" in str(rule) for rule in forward)


def test_without_an_allowlist_every_name_is_answered_and_nothing_learned(
    wired: Callable[..., VmNetwork], resolver: FakeResolver
) -> None:
    vm = wired(allow_hosts=())
    assert a_records(ask(vm, "anything.example")) == {ANY_OTHER}
    assert ask(vm, "anything.example", "AAAA").answer == []  # the guest has no IPv6 route
    assert resolver.seen == ["anything.example."]
    assert learned(vm) == {} and allowed_networks(vm) == []


def test_a_refused_allowlist_changes_nothing(wired: Callable[..., VmNetwork]) -> None:
    vm = wired()
    with pytest.raises(ValueError, match="not a valid domain name"):
        vm.set_allowlist(["bad_name.example"])
    assert vm.plan.allow_hosts == ALLOWED
    assert a_records(ask(vm, "allowed.example")) == {"192.0.2.10"}


def test_close_frees_the_vm_namespace_and_its_uplink(wired: Callable[..., VmNetwork]) -> None:
    vm = wired()
    assert a_records(ask(vm, "allowed.example"))  # the forwarder's threads have been busy
    assert vm.ns_fd is not None
    vm_ns = namespace_id(vm.ns_fd)
    vm.close()
    assert (vm.ns_fd, vm.tap_fd) == (None, None)
    wait_until(lambda: UPLINK.host_link not in links_here(), "the uplink to go with the namespace")
    assert holders_of(vm_ns) == []
    vm.close()  # again: nothing left to do, nothing fails


def test_two_vms_get_their_own_uplinks_side_by_side(wired: Callable[..., VmNetwork]) -> None:
    first, second = wired(), wired(slot=OTHER_SLOT)
    found = links_here()
    assert found[first.uplink.host_link]["addresses"] == [f"{first.uplink.host_ip}/30"]
    assert found[second.uplink.host_link]["addresses"] == [f"{second.uplink.host_ip}/30"]
    assert tables_here() == ["inet pyro_host"]  # shared, loaded once per VM, still one
    assert a_records(ask(second, "allowed.example")) == {"192.0.2.10"}
    assert learned(second) == {"192.0.2.10": TTL} and learned(first) == {}


def test_a_host_link_in_the_way_is_a_conflict_naming_the_slot(
    resolver: FakeResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyroute2 import IPRoute

    monkeypatch.setattr(links, "STALE_LINK_WAIT_S", 0.2)
    with IPRoute() as ipr:  # in the sandbox: something else's link with the uplink's name
        ipr.link("add", ifname=UPLINK.host_link, kind="veth", peer={"ifname": "probe0"})
    vm = VmNetwork(NetworkPlan(SLOT, ALLOWED))
    vm.open()
    try:
        with pytest.raises(ConflictError, match=f"network slot {SLOT} is in use") as caught:
            vm.wire()
        assert caught.value.hint is not None and "PYRO_NET_POOL" in caught.value.hint
    finally:
        vm.close()


def test_an_answer_in_flight_while_the_allowlist_changes_opens_nothing(
    wired: Callable[..., VmNetwork], resolver: FakeResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dns_module, "UPSTREAM_TIMEOUT_S", WAIT)  # the held answer must arrive
    vm = wired()
    release = resolver.hold("allowed.example.")
    replies: list[dns.message.Message] = []
    asking = threading.Thread(target=lambda: replies.append(ask(vm, "allowed.example")))
    asking.start()
    try:
        wait_until(lambda: "allowed.example." in resolver.seen, "the query to reach upstream")
        vm.set_allowlist(["other.example"])
    finally:
        release.set()
        asking.join(WAIT)
    assert replies, "the guest got no answer"
    assert "192.0.2.10" not in learned(vm)


# --- the guest's side of the TAP, as a VMM sees it --------------------------------------------

VNET_HDR = bytes(10)  # struct virtio_net_hdr, all zero: no offloads asked for
GUEST_PORT = 40000


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # no UDP checksum
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    words = sum(struct.unpack("!10H", header))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    return header[:10] + struct.pack("!H", ~words & 0xFFFF) + header[12:] + udp


def _arp_reply_to(request: bytes) -> bytes | None:
    """The guest's answer to an ARP request for its address, or None for any other frame."""
    arp = request[14:42]
    if request[12:14] != b"\x08\x06" or arp[6:8] != b"\x00\x01":
        return None
    if socket.inet_ntoa(arp[24:28]) != GUEST_IP:
        return None
    asker_mac, asker_ip = arp[8:14], arp[14:18]
    reply = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2)
    reply += _mac(GUEST_MAC) + socket.inet_aton(GUEST_IP) + asker_mac + asker_ip
    return asker_mac + _mac(GUEST_MAC) + b"\x08\x06" + reply


def guest_dns_over_tap(vm: VmNetwork, name: str) -> dns.message.Message:
    """Send a DNS query as the guest would, a frame into the TAP, and read the answer back."""
    assert vm.tap_fd is not None
    query = dns.message.make_query(name, "A")
    packet = _ipv4_udp(GUEST_IP, GATEWAY_IP, GUEST_PORT, 53, query.to_wire())
    ether = _mac(GATEWAY_MAC) + _mac(GUEST_MAC) + b"\x08\x00"
    os.write(vm.tap_fd, VNET_HDR + ether + packet)
    deadline = time.monotonic() + WAIT
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([vm.tap_fd], [], [], left)[0]:
            break
        frame = os.read(vm.tap_fd, 65535)[len(VNET_HDR) :]
        if (arp_reply := _arp_reply_to(frame)) is not None:
            os.write(vm.tap_fd, VNET_HDR + arp_reply)
            continue
        ip = frame[14:]
        if frame[12:14] != b"\x08\x00" or ip[9] != 17:
            continue  # IPv6 router solicitations and the like
        udp = ip[(ip[0] & 0x0F) * 4 :]
        sport, dport = struct.unpack("!HH", udp[:4])
        if (socket.inet_ntoa(ip[12:16]), sport, dport) == (GATEWAY_IP, 53, GUEST_PORT):
            assert frame[:6] == _mac(GUEST_MAC) and frame[6:12] == _mac(GATEWAY_MAC)
            return dns.message.from_wire(udp[8:])
    pytest.fail(f"no DNS answer came back through the TAP within {WAIT:g} s")


def test_a_guests_dns_query_through_the_tap_passes_the_filter_and_is_answered(
    wired: Callable[..., VmNetwork],
) -> None:
    # Unlike a socket in the VM's namespace (which arrives on lo), this takes the guest's way in:
    # tap0, through the VM table's input chain.
    vm = wired()
    reply = guest_dns_over_tap(vm, "allowed.example")
    assert reply.rcode() == dns.rcode.NOERROR and a_records(reply) == {"192.0.2.10"}
    assert learned(vm) == {"192.0.2.10": TTL}
    assert guest_dns_over_tap(vm, "other.example").rcode() == dns.rcode.REFUSED


def test_an_address_still_open_for_half_its_ttl_is_not_loaded_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded: list[Any] = []
    monkeypatch.setattr(vm_module.rules, "load", loaded.append)
    network = VmNetwork(NetworkPlan(0, ("web.pyro.test",)))
    with netns.throwaway_namespace() as ns:
        network.ns_fd = ns
        network._learn([("203.0.113.20", 60)])
        network._learn([("203.0.113.20", 60), ("203.0.113.21", 60)])  # only .21 is new
        network.set_allowlist(["web.pyro.test"])  # a new table forgets what was learnt
        network._learn([("203.0.113.20", 60)])
        network.ns_fd = None
    learnt = [doc for doc in loaded if doc and "element" in doc[-1]["add"]]
    opened = [[e["elem"]["val"] for e in doc[-1]["add"]["element"]["elem"]] for doc in learnt]
    assert opened == [["203.0.113.20"], ["203.0.113.21"], ["203.0.113.20"]]
