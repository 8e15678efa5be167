"""A fake internet for networked-VM tests: pyro runs in a network namespace of its own (the
"pyro host") whose only way out leads into another one holding test servers on public-looking
addresses, and no further.

    pyro-host ns                                  inet ns (no route out, forwarding off)
    pyth-T 192.0.2.2/24  ===== veth =====  pyti-T 192.0.2.1/24
    default via 192.0.2.1                         servers on lo: see ADDRESSES

Tests run pyro with `FakeInternet.popen`/`run`, so that the namespaces, veths, nftables rules
and ip_forward it sets up for its VMs are the pyro-host namespace's, never the real host's.
Only the network namespace is entered (not `ip netns exec`'s mount namespace with its own /sys):
/sys/class/net still lists the real host's links, so read links through netlink.

`fake_internet()` builds it all and, on exit, takes it all down and proves nothing is left;
the `fake_internet` fixture (module scope) wraps it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from framework import fake_internet_servers as servers
from framework.fake_internet_servers import (
    A_RECORDS,
    ADDRESSES,
    CNAME_RECORDS,
    DNS_PORT,
    ECHO_PORT,
    HOST_BODIES,
    HOST_HTTP_PORT,
    HTTP_PORT,
    INET_BODIES,
    SERVER_ADDRESSES,
    UPLINK_PREFIX,
    Addresses,
    normal_name,
)
from framework.waiting import WAIT

if TYPE_CHECKING:
    from pyroute2 import IPRoute

__all__ = [
    "ADDRESSES",
    "A_RECORDS",
    "CNAME_RECORDS",
    "DNS_PORT",
    "ECHO_PORT",
    "HOST_BODIES",
    "HOST_HTTP_PORT",
    "HTTP_PORT",
    "INET_BODIES",
    "Addresses",
    "FakeInternet",
    "Route",
    "fake_internet",
    "fake_internet_fixture",
]

NETNS_DIR = Path("/run/netns")
SERVERS_SCRIPT = Path(servers.__file__)
UPLINK_NET = f"{ADDRESSES.gateway.rsplit('.', 1)[0]}.0/{UPLINK_PREFIX}"
DEFAULT_DST = "0.0.0.0/0"
PYRO_LINK_PREFIX = "pyv"  # pyro's own per-VM links, which the route guard leaves to pyro
READY_LIMIT = 60.0  # the servers start in well under a second; the machine may be busy
SETTLE_S = 10.0  # processes killed at teardown need a moment to let go of the namespaces

MAIN_TABLE, LOCAL_TABLE = 254, 255
RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST = 1, 2, 3
ROUTE_KINDS = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable"}


class Route(NamedTuple):
    """One IPv4 route of the pyro-host namespace, as much of it as the guard looks at."""

    table: int
    kind: int  # RTN_*
    dst: str  # "address/prefixlen"
    gateway: str | None
    dev: str | None  # None for a multipath or a blackhole route

    def __str__(self) -> str:
        text = f"{ROUTE_KINDS.get(self.kind, self.kind)} {self.dst}"
        text += f" via {self.gateway}" if self.gateway else ""
        text += f" dev {self.dev}" if self.dev else ""
        return f"{text} table {self.table}"


@dataclass
class FakeInternet:
    """A built fake internet: the names of its namespaces and the ways into the pyro host's."""

    host_ns: str
    inet_ns: str
    uplink: str  # the veth end in the pyro-host namespace
    downlink: str  # its peer in the inet namespace
    workdir: Path
    netns_before: frozenset[str] = frozenset()
    started: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)
    opened: list[IPRoute] = field(default_factory=list, repr=False)

    def host_ns_path(self) -> Path:
        """/run/netns/<host_ns>: where the pyro-host namespace is bound."""
        return NETNS_DIR / self.host_ns

    def inet_ns_path(self) -> Path:
        return NETNS_DIR / self.inet_ns

    @property
    def control_socket(self) -> Path:
        return self.workdir / "control.sock"

    # --- running pyro -----------------------------------------------------------------------

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside the pyro-host namespace; killed at teardown if still running."""
        with _entering(self.host_ns_path()) as enter:
            proc = subprocess.Popen(argv, preexec_fn=enter, **kwargs)
        self.started.append(proc)
        return proc

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run(argv, **kwargs)` inside the pyro-host namespace."""
        with _entering(self.host_ns_path()) as enter:
            return subprocess.run(argv, preexec_fn=enter, **kwargs)

    def env(self) -> dict[str, str]:
        """What to add to the environment of the pyro processes run in here."""
        return {"PYRO_DNS_UPSTREAM": ADDRESSES.dns}

    # --- looking inside ---------------------------------------------------------------------

    def host_iproute(self) -> IPRoute:
        """A pyroute2 IPRoute on the pyro-host namespace; use it with `with`."""
        from pyroute2 import IPRoute

        ipr = IPRoute(netns=self.host_ns, flags=0)  # flags=0: never create it by mistake
        # Its socket keeps the namespace alive, unseen by the teardown's check: closed there.
        self.opened.append(ipr)
        return ipr

    def routes(self) -> list[Route]:
        """Every IPv4 route of the pyro-host namespace, of every table."""
        with self.host_iproute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            return [_route(msg, names) for msg in ipr.route("dump", family=socket.AF_INET)]

    def assert_routes_are_ours(self) -> None:
        """Fail unless the pyro-host namespace routes exactly as the harness set it up.

        Local and broadcast routes of addresses pass; so do connected routes on pyro's links.
        """
        routes = self.routes()
        ours = {
            Route(MAIN_TABLE, RTN_UNICAST, UPLINK_NET, None, self.uplink),
            Route(MAIN_TABLE, RTN_UNICAST, DEFAULT_DST, ADDRESSES.gateway, self.uplink),
        }
        foreign = [r for r in routes if r not in ours and not _address_or_pyro_route(r)]
        missing = ours - set(routes)
        assert not foreign and not missing, (
            f"the pyro-host namespace {self.host_ns} does not route only to the fake internet:\n"
            + "".join(f"  foreign: {r}\n" for r in foreign)
            + "".join(f"  missing: {r}\n" for r in sorted(missing, key=str))
            + "all its IPv4 routes:\n"
            + "".join(f"  {r}\n" for r in routes)
        )

    def links_in_host_ns(self) -> list[str]:
        """The names of the links in the pyro-host namespace."""
        with self.host_iproute() as ipr:
            return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]

    def nft_ruleset(self) -> list[dict[str, Any]]:
        """The pyro-host namespace's nftables ruleset (`nft -j list ruleset`), sans metainfo."""
        argv = ["nft", "-j", "list", "ruleset"]
        done = self.run(argv, capture_output=True, text=True, check=True, timeout=WAIT)
        items: list[dict[str, Any]] = json.loads(done.stdout)["nftables"]
        return [item for item in items if "metainfo" not in item]

    def new_named_netns(self) -> list[str]:
        """Named namespaces (/run/netns) that appeared since the harness was built, bar its own."""
        ours = {self.host_ns, self.inet_ns}
        return sorted(set(_named_netns()) - self.netns_before - ours)

    # --- the DNS server's query counts ------------------------------------------------------

    def queries(self, name: str, rdtype: str | None = None) -> int:
        """How often the DNS server was asked `name`: for `rdtype` ("A", "AAAA"...) or any."""
        counts: dict[str, int] = self._control("queries").get(normal_name(name), {})
        return counts.get(rdtype.upper(), 0) if rdtype else sum(counts.values())

    def reset_queries(self) -> None:
        """Forget every query counted so far (the fixture is shared by a module's tests)."""
        self._control("reset")

    def _control(self, command: str) -> Any:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(WAIT)
            sock.connect(str(self.control_socket))
            sock.sendall(command.encode() + b"\n")
            return json.loads(sock.makefile("rb").readline())


def _route(msg: Any, names: dict[int, str]) -> Route:
    oif = msg.get_attr("RTA_OIF")
    return Route(
        table=msg.get_attr("RTA_TABLE") or msg["table"],
        kind=msg["type"],
        dst=f"{msg.get_attr('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}",
        gateway=msg.get_attr("RTA_GATEWAY"),
        dev=names.get(oif, f"#{oif}") if oif else None,
    )


def _address_or_pyro_route(route: Route) -> bool:
    if route.table == LOCAL_TABLE and route.kind in (RTN_LOCAL, RTN_BROADCAST):
        return True  # the kernel's own, for each address: they lead nowhere
    on_pyro_link = route.dev is not None and route.dev.startswith(PYRO_LINK_PREFIX)
    return on_pyro_link and route.gateway is None and route.dst != DEFAULT_DST


@contextlib.contextmanager
def _entering(path: Path) -> Iterator[Callable[[], None]]:
    """A preexec_fn that moves the child into the network namespace bound at `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield lambda: os.setns(fd, os.CLONE_NEWNET)
    finally:
        os.close(fd)


# --- building and taking down -------------------------------------------------------------


@contextlib.contextmanager
def fake_internet() -> Iterator[FakeInternet]:
    """Build a fake internet; on exit, take it down and fail unless nothing of it is left."""
    if os.geteuid() != 0:
        pytest.skip("the fake internet needs root: it creates network namespaces")
    token = secrets.token_hex(3)
    # Short: the control socket's path must fit in 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix=f"pyt-fi-{token}-", dir="/tmp"))
    net = FakeInternet(
        host_ns=f"pyt-host-{token}",
        inet_ns=f"pyt-inet-{token}",
        uplink=f"pyth-{token}",
        downlink=f"pyti-{token}",
        workdir=workdir,
        netns_before=frozenset(_named_netns()),
    )
    inodes: list[int] = []
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            _build(net, stack, inodes)
            yield net
    finally:
        _assert_gone(net, inodes)


@pytest.fixture(scope="module", name="fake_internet")
def fake_internet_fixture() -> Iterator[FakeInternet]:
    """The fake internet, shared by the tests of a module (its DNS query counts too)."""
    with fake_internet() as net:
        yield net


def _build(net: FakeInternet, stack: contextlib.ExitStack, inodes: list[int]) -> None:
    """Everything, each piece's undoing pushed on `stack` before the next piece is made."""
    for name in (net.host_ns, net.inet_ns):
        inodes.append(_create_netns(name, stack))
    _wire(net)
    for role in ("inet", "host"):
        proc = _start_servers(net, role)
        stack.callback(_stop, proc)
        _await_ready(proc, net.workdir / f"{role}.log")
    stack.callback(_stop_started, net)


def _create_netns(name: str, stack: contextlib.ExitStack) -> int:
    """Create and bind namespace `name`; returns its inode. Skips where that is impossible."""
    from pyroute2 import netns

    path = NETNS_DIR / name
    if path.exists():
        pytest.fail(f"{path} exists already: another harness drew the same name")
    stack.callback(_remove_netns, name)
    try:
        netns.create(name)
    except Exception as exc:
        pytest.skip(f"cannot create a network namespace here: {exc!r}")
    made, own = _stat(path), os.stat("/proc/self/ns/net")
    if made is None or made.st_dev != own.st_dev or made.st_ino == own.st_ino:
        pytest.skip(f"cannot create a network namespace here: {path} is not bound to a new one")
    return made.st_ino


def _remove_netns(name: str) -> None:
    from pyroute2 import netns

    if (NETNS_DIR / name).exists():
        netns.remove(name)


def _wire(net: FakeInternet) -> None:
    from pyroute2 import IPRoute

    # The veth is made inside the pyro-host namespace, so it never shows in the real host's.
    with IPRoute(netns=net.host_ns, flags=0) as ipr:
        peer = {"ifname": net.downlink, "net_ns_fd": net.inet_ns}
        ipr.link("add", ifname=net.uplink, kind="veth", peer=peer)
        _configure(ipr, net.uplink, [(ADDRESSES.host, UPLINK_PREFIX)])
        _configure(ipr, "lo", [])
        ipr.route("add", dst=DEFAULT_DST, gateway=ADDRESSES.gateway)
    with IPRoute(netns=net.inet_ns, flags=0) as ipr:
        _configure(ipr, net.downlink, [(ADDRESSES.gateway, UPLINK_PREFIX)])
        _configure(ipr, "lo", [(address, 32) for address in SERVER_ADDRESSES])


def _configure(ipr: IPRoute, ifname: str, addresses: list[tuple[str, int]]) -> None:
    [index] = ipr.link_lookup(ifname=ifname)
    for address, prefixlen in addresses:
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
    ipr.link("set", index=index, state="up")


def _start_servers(net: FakeInternet, role: str) -> subprocess.Popen[bytes]:
    path = net.inet_ns_path() if role == "inet" else net.host_ns_path()
    argv = [sys.executable, str(SERVERS_SCRIPT), "--role", role, "--netns", str(path)]
    argv += ["--control", str(net.control_socket)]
    with (net.workdir / f"{role}.log").open("wb") as log, _entering(path) as enter:
        # stdin stays open while the harness lives: the servers end when it closes.
        pipe = subprocess.PIPE
        return subprocess.Popen(argv, stdin=pipe, stdout=pipe, stderr=log, preexec_fn=enter)


def _await_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for the servers' `ready` line: every one of them is bound."""
    assert proc.stdout is not None
    deadline, line = time.monotonic() + READY_LIMIT, b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            pytest.fail(f"the servers were not ready after {READY_LIMIT:g} s:\n{log.read_text()}")
        chunk = os.read(proc.stdout.fileno(), 64)
        if not chunk:
            pytest.fail(f"the servers exited ({proc.wait()}) before ready:\n{log.read_text()}")
        line += chunk
    if line != b"ready\n":
        pytest.fail(f"the servers said {line!r}, not ready:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(WAIT)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _stop_started(net: FakeInternet) -> None:
    for proc in net.started:
        _stop(proc)
    for ipr in net.opened:
        ipr.close()


def _assert_gone(net: FakeInternet, inodes: list[int]) -> None:
    """Fail unless both namespaces are gone, with no link of the harness in the real host's."""
    problems = [
        f"namespace {name} is still in {NETNS_DIR}"
        for name in (net.host_ns, net.inet_ns)
        if name in _named_netns()
    ]
    root_links = {name for _, name in socket.if_nameindex()}
    problems += [
        f"link {name} is in the real host's namespace"
        for name in (net.uplink, net.downlink)
        if name in root_links
    ]
    problems += _settled_holders(inodes)
    assert not problems, "the fake internet was not torn down:\n" + "\n".join(problems)


def _settled_holders(inodes: list[int]) -> list[str]:
    deadline = time.monotonic() + SETTLE_S
    while (found := _holders(inodes)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _holders(inodes: list[int]) -> list[str]:
    """Processes that keep one of the namespaces alive: they are in it or hold it open."""
    wanted = {f"net:[{inode}]" for inode in inodes}
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        links = [f"/proc/{pid}/ns/net"]
        with contextlib.suppress(OSError):
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        for link in links:
            with contextlib.suppress(OSError):
                if (target := os.readlink(link)) in wanted:
                    found.append(f"pid {pid} ({_comm(pid)}) keeps {target} through {link}")
    return found


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _named_netns() -> list[str]:
    try:
        return os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None
