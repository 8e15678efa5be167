"""Links, addresses and routes of a VM's network, through netlink (pyroute2).

The VM's namespace holds the guest's TAP (the guest's gateway) and one end of a veth pair;
the other end lives in the host's namespace, where the kernel deletes it together with the
VM's namespace. pyroute2 is imported here only, on the supervisor's setup path.
"""

from __future__ import annotations

import time

from pyro_mcp.errors import ConflictError
from pyro_mcp.network import netns
from pyro_mcp.network.addressing import (
    GATEWAY_IP,
    GATEWAY_MAC,
    GUEST_PREFIX,
    TAP_NAME,
    UPLINK_NAME,
    Uplink,
)

# A dead VM's namespace is freed asynchronously: its host end may linger for a moment.
STALE_LINK_WAIT_S = 3.0


def wire_vm_side(vm_ns: int, host_ns: int, uplink: Uplink) -> None:
    """In the VM's namespace: loopback, the TAP as gateway, the uplink and its default route;
    the uplink's other end is created straight in the host's namespace."""
    from pyroute2 import IPRoute

    with netns.entered(vm_ns), IPRoute() as ipr:
        lo, tap = (_index(ipr, name) for name in ("lo", TAP_NAME))
        ipr.link("set", index=tap, address=GATEWAY_MAC)
        ipr.addr("add", index=tap, address=GATEWAY_IP, prefixlen=GUEST_PREFIX)
        ipr.link("add", ifname=UPLINK_NAME, kind="veth",
                 peer={"ifname": uplink.host_link, "net_ns_fd": host_ns})  # fmt: skip
        up = _index(ipr, UPLINK_NAME)
        ipr.addr("add", index=up, address=uplink.vm_ip, prefixlen=uplink.subnet.prefixlen)
        for index in (lo, tap, up):
            ipr.link("set", index=index, state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway=uplink.host_ip)


def wire_host_side(uplink: Uplink) -> None:
    """The host's end of the uplink: its address (and so its route) and up."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = _index(ipr, uplink.host_link)
        ipr.addr("add", index=index, address=uplink.host_ip, prefixlen=uplink.subnet.prefixlen)
        ipr.link("set", index=index, state="up")


def await_free(uplink: Uplink) -> None:
    """Wait until no link in the calling thread's namespace has this uplink's host name."""
    from pyroute2 import IPRoute

    deadline = time.monotonic() + STALE_LINK_WAIT_S
    with IPRoute() as ipr:
        while ipr.link_lookup(ifname=uplink.host_link):
            if time.monotonic() > deadline:
                raise ConflictError(
                    f"host link {uplink.host_link} already exists: network slot "
                    f"{uplink.slot} is in use outside pyro's records",
                    hint="delete that link, or set PYRO_NET_POOL to a range nothing else uses",
                )
            time.sleep(0.02)


def _index(ipr: object, name: str) -> int:
    found = ipr.link_lookup(ifname=name)  # type: ignore[attr-defined]
    if not found:
        raise LookupError(f"no link named {name}")
    return int(found[0])
