"""Addresses and names of guest networking.

Inside every VM's namespace the guest sees the same thing (one address, gateway, MAC and
TAP), so a warm-start snapshot carries a configured NIC that works in any VM restored from
it. Only the uplink between the VM's namespace and the host differs: a /30 taken from a pool
by the slot the state store allocated to the VM.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from pyro_mcp.errors import InvalidArgumentError

GUEST_IP = "172.16.0.2"
GATEWAY_IP = "172.16.0.1"
GUEST_PREFIX = 30
GUEST_SUBNET = f"172.16.0.0/{GUEST_PREFIX}"
GUEST_MAC = "02:50:59:00:00:02"
GATEWAY_MAC = "02:50:59:00:00:01"  # the TAP's: fixed, so a restored guest's ARP entry holds
TAP_NAME = "tap0"
UPLINK_NAME = "up0"  # the VM namespace's end of the veth pair
HOST_LINK_PREFIX = "pyv"  # the host's end: pyv<slot>, removed by the kernel with the namespace

POOL_ENV = "PYRO_NET_POOL"
DEFAULT_POOL = "10.217.0.0/16"
SLOT_PREFIX = 30


def pool() -> ipaddress.IPv4Network:
    """The host-side range uplinks are cut from (`PYRO_NET_POOL`, a /16 to /28)."""
    text = os.environ.get(POOL_ENV, DEFAULT_POOL)
    try:
        network = ipaddress.IPv4Network(text)
    except ValueError:
        raise InvalidArgumentError(
            f"{POOL_ENV}={text!r} is not an IPv4 network",
            hint=f"unset it or use e.g. {DEFAULT_POOL}",
        ) from None
    if not 8 <= network.prefixlen <= 28:
        raise InvalidArgumentError(
            f"{POOL_ENV}={text!r} must be a /8 to /28 network", hint=f"e.g. {DEFAULT_POOL}"
        )
    if network.overlaps(ipaddress.IPv4Network(GUEST_SUBNET)):
        raise InvalidArgumentError(
            f"{POOL_ENV}={text!r} overlaps {GUEST_SUBNET}, the network every guest sits on",
            hint=f"use a range clear of it, e.g. {DEFAULT_POOL}",
        )
    return network


def slot_count(network: ipaddress.IPv4Network | None = None) -> int:
    return int(2 ** (SLOT_PREFIX - (network or pool()).prefixlen))


@dataclass(frozen=True)
class Uplink:
    """The /30 joining a VM's namespace to the host: the host end `.1`, the VM's `.2`."""

    slot: int
    subnet: ipaddress.IPv4Network

    @classmethod
    def of(cls, slot: int, network: ipaddress.IPv4Network | None = None) -> Uplink:
        network = network or pool()
        if not 0 <= slot < slot_count(network):
            raise ValueError(f"network slot {slot} is outside {network}")
        base = int(network.network_address) + slot * 2 ** (32 - SLOT_PREFIX)
        return cls(slot, ipaddress.IPv4Network((base, SLOT_PREFIX)))

    @property
    def host_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def vm_ip(self) -> str:
        return str(self.subnet.network_address + 2)

    @property
    def host_link(self) -> str:
        return f"{HOST_LINK_PREFIX}{self.slot}"
