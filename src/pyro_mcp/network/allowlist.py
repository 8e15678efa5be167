"""The egress allowlist: domains (exact or `*.example.com`) and IPv4 networks a guest may reach.

Parsed once on the host from what the caller gave; the supervisor's DNS forwarder asks it
which names to answer, and the VM's nftables sets hold its networks.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyro_mcp.errors import InvalidArgumentError

MAX_ENTRIES = 256
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")  # whole labels only: used with fullmatch
_HINT = (
    "give domain names (api.example.com, *.example.com) or IPv4 addresses/CIDRs (203.0.113.0/24)"
)


@dataclass(frozen=True)
class AllowList:
    """Exact names, wildcard suffixes (`*.example.com` matches below example.com, not it),
    and IPv4 networks, each kept in the caller's order without repeats."""

    names: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()  # "example.com" for "*.example.com"
    networks: tuple[ipaddress.IPv4Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        if isinstance(entries, str):
            raise InvalidArgumentError("allow_hosts must be a list of strings", hint=_HINT)
        names: list[str] = []
        suffixes: list[str] = []
        networks: list[ipaddress.IPv4Network] = []
        items = list(entries)
        if len(items) > MAX_ENTRIES:
            raise InvalidArgumentError(
                f"allow_hosts has {len(items)} entries; at most {MAX_ENTRIES} are allowed",
                hint="allow a wildcard domain or a wider CIDR instead of many single entries",
            )
        buckets: dict[str, list[Any]] = {"name": names, "suffix": suffixes, "net": networks}
        for raw in items:
            kind, value = _classify(raw)
            if value not in buckets[kind]:
                buckets[kind].append(value)
        return cls(tuple(names), tuple(suffixes), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def entries(self) -> list[str]:
        """The list as a caller writes it (and as views and the store show it)."""
        return [
            *self.names,
            *(f"*.{suffix}" for suffix in self.suffixes),
            *(str(net) for net in self.networks),
        ]

    def allows_name(self, name: str) -> bool:
        """Whether a DNS name (any case, with or without the final dot) is on the list."""
        name = name.lower().rstrip(".")
        if name in self.names:
            return True
        return any(name.endswith("." + suffix) for suffix in self.suffixes)


def _classify(raw: object) -> tuple[str, object]:
    if not isinstance(raw, str) or not raw.strip():
        raise _bad(raw, "is not a host name or CIDR")
    if not raw.isascii():  # lower() would fold some non-ASCII letters into ASCII ones
        raise _bad(raw, "is not ASCII: give an internationalised name in its xn-- form")
    text = raw.strip().lower().rstrip(".")
    if re.fullmatch(r"[0-9./]+", text) or ":" in text:
        return "net", _network(raw, text)
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    labels = name.split(".")
    valid = len(name) <= 253 and len(labels) >= 2 and not labels[-1].isdigit()
    if not valid or not all(_LABEL.fullmatch(label) for label in labels):
        raise _bad(raw, "is not a valid domain name")
    return ("suffix" if wildcard else "name"), name


def _bad(raw: object, why: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"allow_hosts entry {raw!r} {why}", hint=_HINT)


def _network(raw: str, text: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _bad(raw, "is not a valid IPv4 address or CIDR") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise InvalidArgumentError(
            f"allow_hosts entry {raw!r} is IPv6; guests have IPv4 only",
            hint="allow the IPv4 address or network instead",
        )
    if network.prefixlen == 0:
        raise InvalidArgumentError(
            f"allow_hosts entry {raw!r} allows every address",
            hint="for unfiltered egress, create the workspace without allow_hosts",
        )
    return network
