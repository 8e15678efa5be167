"""Throwaway network namespaces for unit tests that create links, load nftables rules or set
sysctls: all of it happens in a namespace the test made, never in the one the test process
runs in, and `home_namespace_unchanged` proves that afterwards.

`netns_sandbox` moves the test's thread (namespaces belong to threads) into a fresh, unnamed
namespace for the whole test, with loopback up: a stand-in for the host's namespace that the
kernel frees, with everything in it, once the test lets go of it.

The process's own namespace is only ever read here. Another pyro on this machine may run VMs
in it meanwhile and reload its shared table (which renumbers rule handles): comparisons leave
handles out, and links are checked by the names these tests use, not as a whole.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.host import tools
from pyro_mcp.network import netns

FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
# Found once: a test may hide or fake pyro's view of `nft`, never the one that checks on it.
NFT = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
# The uplink slots unit tests wire (far from the first slots a real pyro hands out), and every
# link name they create in a netns_sandbox: none may ever appear outside one.
TEST_SLOTS = (4321, 4322)
TEST_LINK_NAMES = ("tap0", "up0", "probe0", "probe0home", *(f"pyv{slot}" for slot in TEST_SLOTS))


def _blockers(*, nft: bool) -> list[str]:
    reasons = []
    if os.geteuid() != 0:
        reasons.append("network namespaces need root (CAP_SYS_ADMIN)")
    if not Path("/dev/net/tun").exists():
        reasons.append("/dev/net/tun is missing (modprobe tun)")
    if nft and NFT is None:
        reasons.append(f"`nft` is missing ({tools.NFT.install_hint})")
    return reasons


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    """`script` in a fresh interpreter that sees this test's imports (and may drop root)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )


def needs_namespaces(*, nft: bool = False) -> pytest.MarkDecorator:
    """Skip, saying why, unless this process can make namespaces (and run `nft`)."""
    reasons = _blockers(nft=nft)
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) or "n/a")


# --- reading the calling thread's namespace ---------------------------------------------------


def namespace_id(fd: int | None = None) -> str:
    """The namespace (as "net:[inode]") an fd holds, or the calling thread's."""
    return os.readlink(f"/proc/self/fd/{fd}" if fd is not None else "/proc/thread-self/ns/net")


def ruleset_here() -> list[dict[str, Any]]:
    """The calling thread's namespace's nftables ruleset, without metainfo and handles."""
    if NFT is None:
        return []
    done = subprocess.run([NFT, "-j", "list", "ruleset"], capture_output=True, check=True)
    items: list[dict[str, Any]] = json.loads(done.stdout or b'{"nftables": []}')["nftables"]
    return [_unhandled(item) for item in items if "metainfo" not in item]


def _unhandled(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unhandled(v) for k, v in value.items() if k != "handle"}
    if isinstance(value, list):
        return [_unhandled(v) for v in value]
    return value


def tables_here() -> list[str]:
    return sorted(
        f"{i['table']['family']} {i['table']['name']}" for i in ruleset_here() if "table" in i
    )


def sets_here(table: str) -> dict[str, dict[str, Any]]:
    """The sets of `table` in the calling thread's namespace, by name."""
    found = [item["set"] for item in ruleset_here() if "set" in item]
    return {s["name"]: s for s in found if s["table"] == table}


def rules_here(table: str) -> dict[str, list[list[dict[str, Any]]]]:
    """chain -> the expressions of its rules, in order, for `table`."""
    chains: dict[str, list[list[dict[str, Any]]]] = {}
    for item in ruleset_here():
        if "rule" in item and item["rule"]["table"] == table:
            chains.setdefault(item["rule"]["chain"], []).append(item["rule"]["expr"])
    return chains


def links_here() -> dict[str, dict[str, Any]]:
    """name -> index, MAC and IPv4 addresses ("a.b.c.d/len") of each link in this namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = {
            link.get("IFLA_IFNAME"): {
                "index": link["index"],
                "mac": link.get("IFLA_ADDRESS"),
                "up": bool(link["flags"] & 1),
                "addresses": [],
            }
            for link in ipr.get_links()
        }
        by_index = {info["index"]: info for info in links.values()}
        for addr in ipr.get_addr(family=2):
            entry = by_index.get(addr["index"])
            if entry is not None:
                entry["addresses"].append(f"{addr.get('IFA_ADDRESS')}/{addr['prefixlen']}")
    return links


def default_gateway_here() -> str | None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for route in ipr.get_routes(family=2, table=254):
            if route["dst_len"] == 0:
                return str(route.get("RTA_GATEWAY"))
    return None


def forwarding_here() -> str:
    # Opened by the calling thread: /proc/sys/net shows that thread's namespace.
    return FORWARD.read_text().strip()


def set_forwarding_here(value: str) -> None:
    FORWARD.write_text(value)


def holders_of(ns_id: str) -> list[str]:
    """This process's fds and threads that hold (or are in) the namespace `ns_id`."""
    found = []
    for entry in Path("/proc/self/fd").iterdir():
        try:
            if os.readlink(entry) == ns_id:
                found.append(f"fd {entry.name}")
        except OSError:
            continue  # the fd listing's own fd, closed by now
    for task in Path("/proc/self/task").iterdir():
        try:
            if os.readlink(task / "ns" / "net") == ns_id:
                found.append(f"thread {task.name}")
        except OSError:
            continue  # a thread that ended meanwhile
    return found


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def home_namespace_unchanged() -> Iterator[None]:
    """After the test: the thread is back in its namespace, whose ruleset and forwarding are as
    they were and which holds none of the links these tests make."""
    home = namespace_id()
    rules_before, forward_before = ruleset_here(), forwarding_here()
    strays_before = set(links_here()) & set(TEST_LINK_NAMES)
    yield
    assert namespace_id() == home, "the test thread did not come back to its namespace"
    assert ruleset_here() == rules_before, "the process's own namespace's nftables changed"
    assert forwarding_here() == forward_before, "the process's own namespace's ip_forward changed"
    assert set(links_here()) & set(TEST_LINK_NAMES) == strays_before


@pytest.fixture
def netns_sandbox(home_namespace_unchanged: None) -> Iterator[int]:
    """The test runs in a fresh namespace (its fd given), loopback up; freed after it."""
    from pyroute2 import IPRoute

    with netns.throwaway_namespace() as ns, netns.entered(ns):
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield ns
