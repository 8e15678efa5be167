"""The guard that the test session leaves the host's own network as it found it.

Networked tests run pyro inside namespaces they make; nothing may reach the namespace the
session started in. At the end of the session its links, IPv4 forwarding setting and
nftables ruleset must be exactly what they were at the start, or the session fails.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def host_network() -> dict[str, Any]:
    """What the calling thread's namespace looks like: links, forwarding, nftables."""
    nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
    ruleset: Any = None
    if nft is not None:
        done = subprocess.run([nft, "-j", "list", "ruleset"], capture_output=True, check=False)
        items = json.loads(done.stdout or b"{}").get("nftables", [])
        ruleset = [item for item in items if "metainfo" not in item]
    return {
        "links": sorted(name for _, name in socket.if_nameindex()),
        "ip_forward": FORWARD.read_text().strip() if FORWARD.exists() else None,
        "nftables": ruleset,
    }


@pytest.fixture(scope="session", autouse=True)
def host_network_untouched() -> Iterator[None]:
    before = host_network()
    yield
    after = host_network()
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    assert not changed, f"the test session changed the host's network (before, after): {changed}"
