"""nftables rules as JSON documents (`nft -j`), never as command text.

Two tables. Each VM's namespace holds table `inet pyro`: the guest's TAP may reach the
gateway's DNS forwarder, and forward to the uplink only what the policy allows, masqueraded.
The host's namespace holds one table `inet pyro_host` shared by every VM and owned by none:
nothing from an uplink reaches the host itself or another uplink, and guest traffic leaving
the host is masqueraded. Every load is one atomic transaction.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterable
from typing import Any

from pyro_mcp.errors import HostRequirementError, SystemFault
from pyro_mcp.host import tools
from pyro_mcp.network.addressing import GATEWAY_IP, HOST_LINK_PREFIX, TAP_NAME, UPLINK_NAME
from pyro_mcp.network.allowlist import AllowList

VM_TABLE = "pyro"
HOST_TABLE = "pyro_host"
FAMILY = "inet"
MIN_TTL_S = 30
MAX_TTL_S = 86400

# Never reachable in plain egress (an allowlist may name them): this-network, RFC 1918,
# CGNAT, loopback, link-local (cloud metadata), the IETF and documentation-free special
# blocks the host may route, multicast, reserved and broadcast.
BLOCKED = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3",
)  # fmt: skip

Doc = list[dict[str, Any]]


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _field(protocol: str, field: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": field}}


_ESTABLISHED = _match({"ct": {"key": "state"}}, ["established", "related"], "in")
_ACCEPT: dict[str, Any] = {"accept": None}
_DROP: dict[str, Any] = {"drop": None}


def _elements(networks: Iterable[str | ipaddress.IPv4Network]) -> list[Any]:
    out: list[Any] = []
    for item in networks:
        net = ipaddress.IPv4Network(item)
        addr = str(net.network_address)
        out.append(
            addr if net.prefixlen == 32 else {"prefix": {"addr": addr, "len": net.prefixlen}}
        )
    return out


def _replace_table(table: str) -> Doc:
    # add-then-delete makes the delete valid whether or not the table exists: the transaction
    # replaces it atomically, so two loads at once leave one identical table.
    spec = {"family": FAMILY, "name": table}
    return [{"add": {"table": spec}}, {"delete": {"table": spec}}, {"add": {"table": spec}}]


def _chain(table: str, name: str, kind: str, hook: str, prio: int, policy: str) -> dict[str, Any]:
    chain = {"family": FAMILY, "table": table, "name": name, "type": kind, "hook": hook}
    return {"add": {"chain": {**chain, "prio": prio, "policy": policy}}}


def _rule(table: str, chain: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {"family": FAMILY, "table": table, "chain": chain, "expr": list(expr)}}}


def _set(name: str, flag: str, elements: list[Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"family": FAMILY, "table": VM_TABLE, "name": name}
    spec |= {"type": "ipv4_addr", "flags": [flag]}
    if elements:
        spec["elem"] = elements
    return {"add": {"set": spec}}


def vm_table(allow: AllowList) -> Doc:
    """The whole table of a VM's namespace for `allow` (empty: plain egress)."""
    t = VM_TABLE
    from_tap = _match(_meta("iifname"), TAP_NAME)
    outward = [from_tap, _match(_meta("oifname"), UPLINK_NAME)]
    daddr = _field("ip", "daddr")
    doc: Doc = [
        *_replace_table(t),
        _set("allow_net", "interval", _elements(allow.networks)),
        _set("allow_dns", "timeout", []),
        _set("blocked", "interval", _elements(BLOCKED)),
        _chain(t, "input", "filter", "input", 0, "drop"),
        _rule(t, "input", _match(_meta("iifname"), "lo"), _ACCEPT),
        _rule(t, "input", _ESTABLISHED, _ACCEPT),
        _chain(t, "forward", "filter", "forward", 0, "drop"),
        _rule(t, "forward", _ESTABLISHED, _ACCEPT),
        _rule(t, "forward", *outward, _match(daddr, "@allow_net"), _ACCEPT),
        _rule(t, "forward", *outward, _match(daddr, "@allow_dns"), _ACCEPT),
        _chain(t, "postrouting", "nat", "postrouting", 100, "accept"),
        _rule(t, "postrouting", _match(_meta("oifname"), UPLINK_NAME), {"masquerade": None}),
    ]
    to_gateway = [from_tap, _match(daddr, GATEWAY_IP)]
    for proto in ("udp", "tcp"):
        doc.append(_rule(t, "input", *to_gateway, _match(_field(proto, "dport"), 53), _ACCEPT))
    ping = _match(_field("icmp", "type"), "echo-request")
    doc.append(_rule(t, "input", *to_gateway, ping, _ACCEPT))
    if not allow:
        doc.append(_rule(t, "forward", *outward, _match(daddr, "@blocked", "!="), _ACCEPT))
    return doc


_BLOCKED_NETS = tuple(ipaddress.IPv4Network(net) for net in BLOCKED)


def clamp_ttl(ttl: int) -> int:
    """How long a learnt address stays open: its TTL, within 30 s and a day."""
    return min(max(ttl, MIN_TTL_S), MAX_TTL_S)


def learned(addresses: Iterable[tuple[str, int]]) -> Doc:
    """Put the addresses a DNS answer gave into `allow_dns` for their TTL (renewed if there).

    Only public ones: an allowed name whose DNS someone else controls must not open the
    metadata service or the LAN (only an allowlisted CIDR does that)."""
    longest: dict[str, int] = {}
    for ip, ttl in addresses:  # an address twice would be deleted twice: nft refuses that
        if any(ipaddress.IPv4Address(ip) in net for net in _BLOCKED_NETS):
            continue
        longest[ip] = max(longest.get(ip, 0), clamp_ttl(ttl))
    elements = [{"elem": {"val": ip, "timeout": ttl}} for ip, ttl in longest.items()]
    if not elements:
        return []
    target = {"family": FAMILY, "table": VM_TABLE, "name": "allow_dns"}
    bare = [item["elem"]["val"] for item in elements]
    # add, delete, add: valid whether or not an address is there, and its timeout restarts.
    return [
        {"add": {"element": {**target, "elem": bare}}},
        {"delete": {"element": {**target, "elem": bare}}},
        {"add": {"element": {**target, "elem": elements}}},
    ]


def host_table() -> Doc:
    """The host namespace's shared table; the same for every VM, so loading it is idempotent."""
    t = HOST_TABLE
    uplinks = f"{HOST_LINK_PREFIX}*"
    from_uplink = _match(_meta("iifname"), uplinks)
    leaving = _match(_meta("oifname"), uplinks, "!=")
    return [
        *_replace_table(t),
        _chain(t, "input", "filter", "input", 0, "accept"),
        _rule(t, "input", from_uplink, _ESTABLISHED, _ACCEPT),
        _rule(t, "input", from_uplink, _DROP),
        _chain(t, "forward", "filter", "forward", 0, "accept"),
        _rule(t, "forward", from_uplink, _match(_meta("oifname"), uplinks), _DROP),
        _chain(t, "postrouting", "nat", "postrouting", 100, "accept"),
        _rule(t, "postrouting", from_uplink, leaving, {"masquerade": None}),
    ]


def load(doc: Doc) -> None:
    """Apply `doc` in one transaction, in the calling thread's network namespace."""
    if not doc:
        return
    nft = tools.require(tools.NFT)[tools.NFT.command]
    try:
        done = subprocess.run(
            [nft, "-j", "-f", "-"],
            input=json.dumps(
                {"nftables": [{"metainfo": {"json_schema_version": 1}}, *doc]}
            ).encode(),
            capture_output=True,
            timeout=30,
            check=False,
        )
    except OSError as exc:
        raise HostRequirementError(f"cannot run nft: {exc}", hint=tools.NFT.install_hint) from exc
    if done.returncode != 0:
        raise SystemFault(
            f"nftables refused pyro's rules: {done.stderr.decode(errors='replace').strip()}",
            hint="`pyro doctor` checks nftables; the kernel needs nf_tables with NAT",
        )


def ruleset() -> dict[str, Any]:
    """The calling thread's namespace's whole ruleset, as nft's JSON."""
    nft = tools.require(tools.NFT)[tools.NFT.command]
    done = subprocess.run(
        [nft, "-j", "list", "ruleset"], capture_output=True, timeout=30, check=True
    )
    parsed: dict[str, Any] = json.loads(done.stdout or b"{}")
    return parsed
