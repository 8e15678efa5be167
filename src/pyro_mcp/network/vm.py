"""One VM's network, as its supervisor runs it: the namespace, the TAP the VMM takes, the
uplink, the filter and the DNS forwarder, and allowlist changes while the VM runs.

`open` is quick and comes before the VMM starts (the VMM needs the TAP); `wire` does the rest
and may run while the VM boots: until its last step turns forwarding on, nothing the guest
sends goes anywhere. Closing drops the supervisor's hold; the kernel frees the namespace, and
everything in it, once the VMM has gone too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyro_mcp.network import links, netns, rules
from pyro_mcp.network.addressing import (
    GATEWAY_IP,
    GUEST_IP,
    GUEST_MAC,
    GUEST_PREFIX,
    GUEST_SUBNET,
    TAP_NAME,
    Uplink,
)
from pyro_mcp.network.allowlist import AllowList
from pyro_mcp.vmm.base import GuestNic

if TYPE_CHECKING:
    from pyro_mcp.network.dns import DnsForwarder


@dataclass(frozen=True)
class NetworkPlan:
    """What the launcher decides for a VM's network: its uplink slot and allowlist."""

    slot: int
    allow_hosts: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"slot": self.slot, "allow_hosts": list(self.allow_hosts)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkPlan:
        return cls(int(data["slot"]), tuple(str(h) for h in data.get("allow_hosts", ())))


def guest_nic(tap_fd: int, ns_fd: int) -> GuestNic:
    """The guest's NIC over the TAP `tap_fd` of namespace `ns_fd`: the same in every VM."""
    return GuestNic(
        TAP_NAME, GUEST_MAC, f"{GUEST_IP}/{GUEST_PREFIX}", GATEWAY_IP, tap_fd=tap_fd, netns_fd=ns_fd
    )


def describe(plan: NetworkPlan | None) -> dict[str, Any]:
    """The configuration a networked VM has, as views and `network_info_vm` report it."""
    if plan is None:
        return {"network_enabled": False}
    uplink = Uplink.of(plan.slot)
    return {
        "network_enabled": True,
        "guest_ip": GUEST_IP,
        "gateway_ip": GATEWAY_IP,
        "subnet_cidr": GUEST_SUBNET,
        "mac_address": GUEST_MAC,
        "tap_name": TAP_NAME,
        "dns_servers": [GATEWAY_IP],
        "host_uplink": {"link": uplink.host_link, "subnet_cidr": str(uplink.subnet)},
        "allow_hosts": list(plan.allow_hosts),
    }


class VmNetwork:
    """A VM's network, from its namespace's creation to the supervisor letting go of it."""

    def __init__(self, plan: NetworkPlan, *, persistent_tap: bool = False) -> None:
        self.plan = plan
        self.uplink = Uplink.of(plan.slot)
        self.allow = AllowList.parse(plan.allow_hosts)
        self._persistent_tap = persistent_tap
        self.ns_fd: int | None = None
        self.tap_fd: int | None = None
        self.forwarder: DnsForwarder | None = None
        self._expiry: dict[str, float] = {}  # learnt address -> when its set element lapses

    def open(self) -> None:
        """The namespace and the TAP in it: what the VMM needs before it starts."""
        self.ns_fd = netns.create()
        with netns.entered(self.ns_fd):
            # A new namespace copies the initial namespace's setting, which may be on: off
            # until the filter is in.
            netns.set_forwarding(False)
            self.tap_fd = netns.open_tap(TAP_NAME, persist=self._persistent_tap)

    def wire(self) -> None:
        """Uplink, rules, DNS forwarder; forwarding is turned on last."""
        # Imported here, off every path but a networked VM's set-up (dnspython costs ~40 ms).
        from pyro_mcp.network.dns import DnsForwarder, host_upstreams

        assert self.ns_fd is not None
        upstreams = host_upstreams()
        host_ns = netns.current()
        try:
            links.await_free(self.uplink)
            links.wire_vm_side(self.ns_fd, host_ns, self.uplink)
        finally:
            os.close(host_ns)
        links.wire_host_side(self.uplink)
        rules.load(rules.host_table())
        netns.set_forwarding(True)
        with netns.entered(self.ns_fd):
            rules.load(rules.vm_table(self.allow))
            udp, tcp = _dns_sockets()
        self.forwarder = DnsForwarder(
            udp, tcp, upstreams, new_socket=_upstream_socket, allowlist=self.allow or None,
            learn=self._learn,
        )  # fmt: skip
        self.forwarder.start()
        with netns.entered(self.ns_fd):
            netns.set_forwarding(True)

    def set_allowlist(self, allow_hosts: list[str]) -> None:
        """Swap the allowlist of the running VM; addresses learnt for old names are dropped."""
        assert self.ns_fd is not None
        allow = AllowList.parse(allow_hosts)
        # The forwarder first (it waits out any answer being learnt), then the table, whose
        # reload empties the learnt set: nothing the old list let in survives the swap.
        if self.forwarder is not None:
            self.forwarder.set_allowlist(allow or None)
        with netns.entered(self.ns_fd):
            rules.load(rules.vm_table(allow))
        self._expiry.clear()
        self.allow = allow
        self.plan = NetworkPlan(self.plan.slot, tuple(allow.entries()))

    def _learn(self, addresses: list[tuple[str, int]]) -> None:
        """Open the answer's addresses; one still open for half its TTL needs no nft run
        (the forwarder calls this under its lock, so the map needs none)."""
        assert self.ns_fd is not None
        now = time.monotonic()
        clamped = [(ip, rules.clamp_ttl(ttl)) for ip, ttl in addresses]
        due = [(ip, ttl) for ip, ttl in clamped if self._expiry.get(ip, 0.0) - now < ttl / 2]
        if not due:
            return
        with netns.entered(self.ns_fd):
            rules.load(rules.learned(due))
        self._expiry.update((ip, now + ttl) for ip, ttl in due)

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
        for fd in (self.tap_fd, self.ns_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.tap_fd = self.ns_fd = None


def _dns_sockets() -> tuple[socket.socket, socket.socket]:
    """The forwarder's sockets on the gateway, made in the calling thread's namespace."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.bind((GATEWAY_IP, 53))
    tcp.bind((GATEWAY_IP, 53))
    tcp.listen(16)
    return udp, tcp


def _upstream_socket(kind: int) -> socket.socket:
    # Forwarder threads start outside any `entered` block: their sockets are the host's.
    return socket.socket(socket.AF_INET, kind)
