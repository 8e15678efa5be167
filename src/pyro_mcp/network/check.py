"""What guest networking needs from this host, tried for real in a namespace of its own
(nothing of it outlives the check), each failure with the fix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pyro_mcp.errors import PyroError
from pyro_mcp.host import tools
from pyro_mcp.network import netns, rules
from pyro_mcp.network.addressing import TAP_NAME
from pyro_mcp.network.allowlist import AllowList

FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def check() -> dict[str, Any]:
    """`ok`, the `problems` found (each naming its fix), and the host's forwarding state."""
    problems: list[str] = []
    if tools.NFT.path() is None:
        problems.append(
            f"`nft` is missing (filters and NATs guest traffic): {tools.NFT.install_hint}"
        )
    if not Path("/dev/net/tun").exists():
        problems.append("/dev/net/tun is missing: load the tun module (modprobe tun)")
    try:
        import pyroute2  # noqa: F401  # the netlink library the supervisor wires links with
    except ImportError as exc:
        problems.append(f"pyroute2 does not import ({exc}): reinstall pyro-mcp's dependencies")
    if not problems:
        problems += _try_namespace()
    return {
        "ok": not problems,
        "problems": problems,
        "nft_binary": tools.NFT.path(),
        "tun_available": Path("/dev/net/tun").exists(),
        "host_ip_forward": FORWARD.exists() and FORWARD.read_text().strip() == "1",
    }


def _try_namespace() -> list[str]:
    """A namespace, a TAP, the VM table and forwarding, in a namespace nothing else joins."""
    try:
        with netns.throwaway_namespace() as ns, netns.entered(ns):
            os.close(netns.open_tap(TAP_NAME))
            rules.load(rules.vm_table(AllowList()))
            netns.set_forwarding(True)
    except PyroError as exc:
        return [str(exc)]
    except OSError as exc:
        return [f"network namespace set-up failed: {exc}; guest networking needs root"]
    return []
