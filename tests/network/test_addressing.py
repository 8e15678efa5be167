"""Uplink addressing: every slot of the pool gets its own /30, and its host link a valid name."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.network import addressing
from pyro_mcp.network.addressing import POOL_ENV, Uplink, pool, slot_count
from pyro_mcp.network.vm import NetworkPlan, describe

IFNAMSIZ = 16  # Linux link names: at most 15 characters and the terminating NUL


def test_the_default_pool_is_a_slash_16_of_16384_slots() -> None:
    assert pool() == ipaddress.IPv4Network(addressing.DEFAULT_POOL)
    assert slot_count() == 2**14


def test_slot_zero_is_the_first_slash_30_of_the_pool() -> None:
    uplink = Uplink.of(0)
    assert uplink.subnet == ipaddress.IPv4Network("10.217.0.0/30")
    assert (uplink.host_ip, uplink.vm_ip, uplink.host_link) == ("10.217.0.1", "10.217.0.2", "pyv0")


def test_the_last_slot_is_the_last_slash_30_of_the_pool() -> None:
    last = slot_count() - 1
    uplink = Uplink.of(last)
    assert uplink.subnet == ipaddress.IPv4Network("10.217.255.252/30")
    assert (uplink.host_ip, uplink.vm_ip) == ("10.217.255.253", "10.217.255.254")
    assert uplink.host_link == f"pyv{last}"


@pytest.mark.parametrize("slot", [-1, 2**14, 2**20])
def test_a_slot_outside_the_pool_is_refused(slot: int) -> None:
    with pytest.raises(ValueError, match=rf"network slot {slot} is outside 10\.217\.0\.0/16"):
        Uplink.of(slot)


def test_a_pool_given_explicitly_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POOL_ENV, "not a network")  # never read when a network is given
    small = ipaddress.IPv4Network("192.0.2.0/28")
    assert slot_count(small) == 4
    assert Uplink.of(3, small).subnet == ipaddress.IPv4Network("192.0.2.12/30")
    with pytest.raises(ValueError, match=r"outside 192\.0\.2\.0/28"):
        Uplink.of(4, small)


def test_every_slot_of_a_small_pool_gets_a_distinct_slash_30_inside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(POOL_ENV, "10.99.8.64/26")
    network = pool()
    uplinks = [Uplink.of(slot) for slot in range(slot_count())]
    assert len(uplinks) == 16
    for uplink in uplinks:
        assert uplink.subnet.prefixlen == 30 and uplink.subnet.subnet_of(network)
        # .1 and .2 are the two usable addresses of a /30: neither is its network or broadcast.
        assert ipaddress.IPv4Address(uplink.host_ip) in list(uplink.subnet.hosts())
        assert ipaddress.IPv4Address(uplink.vm_ip) in list(uplink.subnet.hosts())
        assert uplink.host_ip != uplink.vm_ip
    for a, b in itertools.combinations(uplinks, 2):
        assert not a.subnet.overlaps(b.subnet), (a, b)
    # Together they tile the pool exactly: no address is left over or used twice.
    assert sum(u.subnet.num_addresses for u in uplinks) == network.num_addresses
    assert len({u.host_link for u in uplinks}) == len(uplinks)


@pytest.mark.parametrize("pool_text", [addressing.DEFAULT_POOL, "10.0.0.0/8"])
def test_host_link_names_fit_linux_interface_names(
    monkeypatch: pytest.MonkeyPatch, pool_text: str
) -> None:
    monkeypatch.setenv(POOL_ENV, pool_text)
    longest = Uplink.of(slot_count() - 1).host_link
    assert len(longest) < IFNAMSIZ, longest


def test_the_guests_nic_is_the_same_whatever_the_slot() -> None:
    # Warm-start snapshots carry the guest's NIC configuration: it must hold in every VM.
    first, last = (describe(NetworkPlan(slot)) for slot in (0, slot_count() - 1))
    guest_keys = ("guest_ip", "gateway_ip", "subnet_cidr", "mac_address", "tap_name", "dns_servers")
    assert {k: first[k] for k in guest_keys} == {k: last[k] for k in guest_keys}
    assert first["host_uplink"] != last["host_uplink"]
    subnet = ipaddress.IPv4Network(addressing.GUEST_SUBNET)
    assert {addressing.GUEST_IP, addressing.GATEWAY_IP} == {str(h) for h in subnet.hosts()}
    assert not subnet.overlaps(pool())
    for mac in (addressing.GUEST_MAC, addressing.GATEWAY_MAC):
        first_octet = int(mac.split(":")[0], 16)
        assert first_octet & 0b10 and not first_octet & 0b1  # locally administered, unicast
    assert addressing.GUEST_MAC != addressing.GATEWAY_MAC


@pytest.mark.parametrize("text", ["not a network", "10.217.0.1/16", "fd00::/64", "", "10.0.0.0/x"])
def test_a_pool_that_is_not_an_ipv4_network_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv(POOL_ENV, text)
    with pytest.raises(InvalidArgumentError) as caught:
        pool()
    assert caught.value.message == f"{POOL_ENV}={text!r} is not an IPv4 network"
    assert caught.value.hint is not None and addressing.DEFAULT_POOL in caught.value.hint


@pytest.mark.parametrize("text", ["10.217.0.0/29", "10.217.0.0/30", "10.0.0.0/7", "0.0.0.0/0"])
def test_a_pool_too_small_or_too_large_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv(POOL_ENV, text)
    with pytest.raises(InvalidArgumentError) as caught:
        pool()
    assert caught.value.message == f"{POOL_ENV}={text!r} must be a /8 to /28 network"


@pytest.mark.parametrize(("text", "slots"), [("10.0.0.0/8", 2**22), ("192.0.2.0/28", 4)])
def test_the_pool_limits_are_accepted(
    monkeypatch: pytest.MonkeyPatch, text: str, slots: int
) -> None:
    monkeypatch.setenv(POOL_ENV, text)
    assert slot_count() == slots


@pytest.mark.parametrize("text", ["172.16.0.0/16", "172.16.0.0/28", "172.0.0.0/8"])
def test_a_pool_overlapping_the_guest_subnet_is_refused(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv(POOL_ENV, text)
    with pytest.raises(InvalidArgumentError, match=POOL_ENV):
        pool()
