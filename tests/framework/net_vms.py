"""Networked VMs under test: pyro runs inside the fake internet's pyro-host namespace, and
whatever networking it set up for a VM is proven gone afterwards.

The fixture moves the test's own main thread into the pyro-host namespace (namespaces belong
to threads), so every supervisor the SDK starts from it, and every VM namespace and uplink
those make, lives there; the route guard runs first, and the resolver the VMs' DNS
forwarders ask is the fake internet's. Once a test has deleted its VMs,
`assert_no_network_leftovers` insists that no `pyv*` uplink, no table but the shared
`pyro_host` one, no named namespace and no uplink slot is left.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from framework.fake_internet import ADDRESSES, FakeInternet
from framework.waiting import wait_until
from pyro_mcp.network import netns
from pyro_mcp.network.rules import HOST_TABLE
from pyro_mcp.sdk import Pyro
from pyro_mcp.state import network as slots

UPLINK_PREFIX = "pyv"
# The kernel frees a dead namespace in a work queue shared by every namespace on the machine;
# on a busy one that runs seconds behind.
TEARDOWN_WAIT_S = 60.0


def uplinks(net: FakeInternet) -> list[str]:
    return [name for name in net.links_in_host_ns() if name.startswith(UPLINK_PREFIX)]


def tables(net: FakeInternet) -> list[str]:
    return sorted(item["table"]["name"] for item in net.nft_ruleset() if "table" in item)


def network_leftovers(net: FakeInternet, pyro: Pyro) -> list[str]:
    found = [f"uplink {name} in the pyro-host namespace" for name in uplinks(net)]
    found += [f"nftables table {t}" for t in tables(net) if t != HOST_TABLE]
    found += [f"named network namespace {name}" for name in net.new_named_netns()]
    if pyro.vms.store.path.exists():
        found += [f"uplink slot {s} held by {v}" for v, s in slots.held(pyro.vms.store).items()]
    return found


@contextlib.contextmanager
def inside(net: FakeInternet) -> Iterator[None]:
    """This thread, and every VM it starts, in the pyro-host namespace; its routes checked
    first (the guests' resolver, PYRO_DNS_UPSTREAM, is the caller's to point at ADDRESSES.dns)."""
    net.assert_routes_are_ours()
    target = os.open(net.host_ns_path(), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with netns.entered(target):
            yield
    finally:
        os.close(target)


@pytest.fixture
def net_pyro(
    vm_pyro: Pyro, fake_internet: FakeInternet, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pyro]:
    """`vm_pyro`, running inside the fake internet's pyro-host namespace."""
    monkeypatch.setenv("PYRO_DNS_UPSTREAM", ADDRESSES.dns)
    with inside(fake_internet):
        yield vm_pyro


def assert_no_network_leftovers(net: FakeInternet, pyro: Pyro) -> None:
    """Wait out the kernel's asynchronous namespace teardown, then insist nothing is left."""
    try:
        wait_until(lambda: not network_leftovers(net, pyro), "VM networking gone", TEARDOWN_WAIT_S)
    except BaseException:
        raise AssertionError(f"left behind: {network_leftovers(net, pyro)}") from None
