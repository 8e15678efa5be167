"""Guest networking benchmark: what networking adds to creating a VM, what a guest's TCP gets
through the VM's network, and how fast an allowlist change takes effect; one run, one JSON.

Every VM runs inside the tests' fake internet (tests/framework/fake_internet.py), as the
networked-VM tests run them: this process's main thread enters the harness's pyro-host
namespace, whose only routes lead to test servers in a namespace of the harness's own; the
route guard runs before any networked VM starts; the guests' DNS forwarders ask the harness's
DNS server. Nothing is sent anywhere else, and nothing of the real host's network is changed.
Needs root (the harness creates network namespaces). Usage:

    .venv/bin/python bench/network.py [--runs 7] [--cache-dir DIR] [--mib 64] [--connects 50]

The state directory is a private temporary one; the cache is the user's unless --cache-dir
(PYRO_CACHE_DIR) moves it; an environment not built yet is built once, before the harness
exists (building needs the real network). Standby VMs are off (PYRO_STANDBY=0): every VM
restores its snapshot. Wall times, p50_ms the median, rounds interleaved so that load
drifting on the machine hits each path alike:

- create: create_workspace with network_policy "off", "egress", and "egress" with
  allow_hosts=["web.pyro.test"] (split at its "seed /workspace" phase: until the VM is up,
  and the rest); the first exec of `true` after it (so no cost deferred past the create
  hides), their sum, and delete_workspace. One-shot run_in_vm(`true`) with
  network=False and True. A warm-up round first: the first networked VM of a kind cold-boots
  its networked snapshot template once (`first_use_ms`). A timed sample that had to make a
  template anyway (the snapshot key changed under the run, e.g. the guest agent's source was
  edited) is thrown away and taken again, up to 3 tries, and listed.
- tcp: from a python3 script in an egress workspace (guest clock): --connects connect()
  latencies and 1-byte echo round trips, --mib MiB sent to a sink and received from a source;
  the servers are a small script this one starts inside the harness's inet namespace on the
  echo address 203.0.113.10 (killed by pid at the end). Not the harness's echo on port 7: its
  listen backlog of 5 overflows under a fast client, and a dropped SYN costs a 1 s retransmit.
  `send_mib_per_s_by_sink_clock` is the sink's own first-byte-to-EOF time. The same script
  run in the pyro-host namespace gives two references: the same servers through the harness's
  veth (no VM, no pyro filter), and the same server on the pyro-host namespace's loopback
  (the host's ceiling).
- dns: getaddrinfo("web.pyro.test") in the guest, one at a time and 8 at once, plain egress
  vs an allowlist naming it (a filtered answer's addresses are loaded into the VM's nftables
  set before the guest sees it).
- allowlist: update_workspace(allow_hosts=...) wall time on a running workspace, without and
  with a guest poller running; and the time from the call's start until the poller's connect
  to the newly allowed address reaches a server in the inet namespace (both on the host's
  monotonic clock; the poller tries every ~POLL_MS, so that is the resolution). By CIDR
  (203.0.113.30/32: an nftables set) and by name (other.pyro.test: the DNS forwarder, whose
  answers put the address in a set). Then narrowed back: connects that still land count (the
  poller keeps the address it last resolved, so a learnt address left allowed would show).

At the end every workspace and VM of the private state is deleted, and the script checks that
no pyv* uplink, VM nftables table or uplink slot is left in the pyro-host namespace (the
harness then proves its namespaces are gone). The load average is reported: on a 2-core
machine with other work, read the numbers with it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import common
from vm_engine import summary
from warm_start import timed

from framework.fake_internet import ADDRESSES, FakeInternet
from framework.net_vms import tables, uplinks
from pyro_mcp import Pyro
from pyro_mcp.network.rules import HOST_TABLE
from pyro_mcp.runtime import backends
from pyro_mcp.state import network as slots

SETTLE_S = 0.5  # a deleted VM's teardown (and the kernel freeing its namespace) still runs
SINK_PORT, SOURCE_PORT, ECHO_PORT, WATCH_PORT = 5001, 5002, 5007, 5003
ALLOWED = ["web.pyro.test"]
POLL_MS = 20  # the guest poller's connect timeout, and its pause between tries
EFFECT_LIMIT_S = 20.0
QUIET_S = 0.4  # no connect may get through for this long before an allowlist is widened
LATE_S = 0.1  # a connect landing this long after a narrowing returned got through too late
STUCK_S = 3.0  # connects still landing this long after a narrowing: the target stayed allowed
# getaddrinfo in the guest: 20 one after another, then 5 rounds of 8 at once.
LOOKUPS = {"resolve": ["web.pyro.test", 20], "resolve_together": ["web.pyro.test", 8, 5]}
PARTS = ("create", "create_until_vm_up", "create_seed_phase", "create_plus_first_exec", "delete")
STATS = ("p50_ms", "min_ms")  # what the differences are taken of; the minimum is less noisy
CREATE_KINDS: dict[str, dict[str, Any]] = {
    "off": {"network_policy": "off"},
    "egress": {"network_policy": "egress"},
    "egress_allow_hosts": {"network_policy": "egress", "allow_hosts": ALLOWED},
}

# Run in a namespace by this script: TCP sinks, sources and echoes, and `watch` listeners
# that report each accept's time (CLOCK_MONOTONIC, the same in every namespace) on stdout.
SERVER = r"""
import json, os, socket, sys, threading, time
want, have = os.stat(sys.argv[1]), os.stat("/proc/self/ns/net")
if (want.st_dev, want.st_ino) != (have.st_dev, have.st_ino):
    sys.exit("bench server: not inside the network namespace " + sys.argv[1])
lock = threading.Lock()
def say(**event):
    with lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
CHUNK = memoryview(bytes(1 << 20))
def sink(conn):
    buf, total, first = bytearray(1 << 20), 0, None
    while n := conn.recv_into(buf):
        first = first or time.monotonic()
        total += n
    took = time.monotonic() - first if first else 0.0
    conn.sendall(json.dumps({"bytes": total, "server_seconds": took}).encode())
def source(conn):
    head = b""
    while len(head) < 8 and (part := conn.recv(8 - len(head))):
        head += part
    left = int.from_bytes(head, "big")
    while left:
        n = min(left, len(CHUNK))
        conn.sendall(CHUNK[:n])
        left -= n
def echo(conn):
    while data := conn.recv(65536):
        conn.sendall(data)
def handle(conn, kind):
    with conn:
        try:
            {"sink": sink, "source": source, "echo": echo}[kind](conn)
        except OSError:
            pass
def serve(listener, kind, port):
    while True:
        conn, _ = listener.accept()
        if kind == "watch":
            say(event="accept", port=port, t=time.monotonic())
            conn.close()
            continue
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(conn, kind), daemon=True).start()
for spec in sys.argv[2:]:
    kind, host, port = spec.split(":")
    listener = socket.create_server((host, int(port)), backlog=128)
    threading.Thread(target=serve, args=(listener, kind, int(port)), daemon=True).start()
say(event="ready")
sys.stdin.buffer.read()
"""

# Run in the guest (python3 of debian:12) and in the pyro-host namespace: what spec asks.
CLIENT = r"""
import json, socket, sys, threading, time
spec, out = json.loads(sys.argv[1]), {}
def ms(start):
    return round((time.perf_counter() - start) * 1000, 3)
if "resolve" in spec:
    name, count = spec["resolve"]
    out["resolve_ms"] = []
    for _ in range(count):
        t = time.perf_counter()
        socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
        out["resolve_ms"].append(ms(t))
if "resolve_together" in spec:
    name, count, rounds = spec["resolve_together"]
    args = (name, 80, socket.AF_INET, socket.SOCK_STREAM)
    out["resolve_together_ms"] = []
    for _ in range(rounds):
        lookups = [threading.Thread(target=socket.getaddrinfo, args=args) for _ in range(count)]
        t = time.perf_counter()
        for lookup in lookups:
            lookup.start()
        for lookup in lookups:
            lookup.join()
        out["resolve_together_ms"].append(ms(t))
if "echo" in spec:
    address, count = tuple(spec["echo"]), spec["connects"]
    out["connect_ms"], out["echo_rtt_ms"] = [], []
    for _ in range(count):
        t = time.perf_counter()
        conn = socket.create_connection(address, timeout=10)
        out["connect_ms"].append(ms(t))
        conn.close()
    with socket.create_connection(address, timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            t = time.perf_counter()
            conn.sendall(b"x")
            assert conn.recv(1) == b"x"
            out["echo_rtt_ms"].append(ms(t))
if "sink" in spec:
    chunk, left = memoryview(bytes(1 << 20)), spec["bytes"]
    with socket.create_connection(tuple(spec["sink"]), timeout=60) as conn:
        t = time.perf_counter()
        while left:
            n = min(left, len(chunk))
            conn.sendall(chunk[:n])
            left -= n
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while part := conn.recv(4096):
            reply += part
        out["send"] = {"seconds": time.perf_counter() - t, **json.loads(reply)}
if "source" in spec:
    buf, got = bytearray(1 << 20), 0
    with socket.create_connection(tuple(spec["source"]), timeout=60) as conn:
        t = time.perf_counter()
        conn.sendall(spec["bytes"].to_bytes(8, "big"))
        while n := conn.recv_into(buf):
            got += n
        out["receive"] = {"seconds": time.perf_counter() - t, "bytes": got}
print(json.dumps(out))
"""

# Runs in the guest's background until killed: connects to HOST:PORT every ~POLL_MS. Like a
# client that caches DNS, it keeps using the last address it got when a lookup is refused.
POLLER = r"""
import os, socket, sys, time
host, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with open("/tmp/bench-poller.pid", "w") as handle:
    handle.write(str(os.getpid()))
address = None
while True:
    try:
        address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except OSError:
        pass
    if address is not None:
        conn = socket.socket()
        conn.settimeout(wait)
        try:
            conn.connect(address)
        except OSError:
            pass
        finally:
            conn.close()
    time.sleep(wait)
"""


# --- servers in the harness's namespaces ---------------------------------------------------


class BenchServer:
    """SERVER, started inside the namespace bound at `ns_path`; its events in a queue."""

    def __init__(self, ns_path: Path, *listeners: str) -> None:
        fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVER, str(ns_path), *listeners],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                preexec_fn=lambda: os.setns(fd, os.CLONE_NEWNET),
            )
        finally:
            os.close(fd)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            ready = self.events.get(timeout=30)
        except queue.Empty:
            ready = {}
        if ready.get("event") != "ready":
            self.stop()
            raise RuntimeError(f"the bench server in {ns_path} did not start: {ready}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def accepts(self, timeout: float) -> Iterator[float]:
        """Accept times, as they come, until none came for `timeout` seconds."""
        while True:
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                return
            if event.get("event") == "accept":
                yield float(event["t"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # by its pid: the Popen this object started
        self.proc.wait(15)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def run_client(ns_path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """CLIENT, run by this venv's python inside the namespace bound at `ns_path`."""
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        done = subprocess.run(
            [sys.executable, "-c", CLIENT, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
            preexec_fn=lambda: os.setns(fd, os.CLONE_NEWNET),
        )
    finally:
        os.close(fd)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def guest_client(pyro: Pyro, wid: str, spec: dict[str, Any]) -> dict[str, Any]:
    result = pyro.exec_workspace(
        wid, command=["python3", "-c", CLIENT, json.dumps(spec)], timeout_seconds=300
    )
    assert result["exit_code"] == 0, result["stderr"]
    found: dict[str, Any] = json.loads(result["stdout"])
    return found


# --- 1. what networking adds to a create -----------------------------------------------------


def boot_mode(view: dict[str, Any]) -> str:
    return str(view.get("metadata", {}).get("boot_mode", "?"))


def workspace_round(
    pyro: Pyro, env: str, options: dict[str, Any], phases: list[str]
) -> dict[str, Any]:
    """create (split at its "seed /workspace" phase: the VM is up), the first exec of
    `true`, delete: each timed."""
    marks: dict[str, float] = {}

    def phase(name: str) -> None:
        phases.append(name)
        marks.setdefault(name.split()[0], time.perf_counter())

    started = time.perf_counter()
    view = pyro.create_workspace(environment=env, on_phase=phase, **options)
    created = time.perf_counter()
    wid = view["workspace_id"]
    try:
        result = pyro.exec_workspace(wid, command=["true"])
        executed = time.perf_counter()
        assert result["exit_code"] == 0, result
    finally:
        pyro.delete_workspace(wid)
    deleted = time.perf_counter()
    seeding = marks.get("seed", created)
    return {
        "create": (created - started) * 1000,
        "create_until_vm_up": (seeding - started) * 1000,
        "create_seed_phase": (created - seeding) * 1000,
        "first_exec": (executed - created) * 1000,
        "create_plus_first_exec": (executed - started) * 1000,
        "delete": (deleted - executed) * 1000,
        "boot_mode": boot_mode(view),
    }


def one_shot(pyro: Pyro, env: str, network: bool, phases: list[str]) -> float:
    started = time.perf_counter()
    result = pyro.run_in_vm(
        environment=env, command=["true"], network=network, on_phase=phases.append
    )
    took = (time.perf_counter() - started) * 1000
    assert result["exit_code"] == 0, result
    return took


def without_template(action: Callable[[list[str]], Any], redone: list[str], what: str) -> Any:
    """`action(phases)`, tried up to 3 times until it made no snapshot template; None if it
    always did. A template is made when the snapshot key changes under a running benchmark:
    pyro repacks the environment's initramfs when the guest agent's source changed (someone
    editing the tree), or another checkout sharing the cache did so. Not what is timed here."""
    for _ in range(3):
        phases: list[str] = []
        result = action(phases)
        if not any(phase.startswith("snapshot") for phase in phases):
            return result
        redone.append(what)
    return None


def create_costs(pyro: Pyro, env: str, runs: int) -> dict[str, Any]:
    first: dict[str, float] = {}
    for kind, options in CREATE_KINDS.items():  # warm up: the first use of each kind
        first[f"workspace_{kind}"] = round(workspace_round(pyro, env, options, [])["create"], 1)
    for network in (False, True):
        first[f"run_in_vm_network_{str(network).lower()}"] = round(
            one_shot(pyro, env, network, []), 1
        )
    redone: list[str] = []
    rounds: dict[str, dict[str, list[float]]] = {kind: {} for kind in CREATE_KINDS}
    modes: dict[str, dict[str, int]] = {kind: {} for kind in CREATE_KINDS}
    one_shots: dict[str, list[float]] = {"network_false": [], "network_true": []}
    kinds = list(CREATE_KINDS)
    for i in range(runs):
        for kind in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:  # rotate who goes first
            time.sleep(SETTLE_S)
            round_of = functools.partial(workspace_round, pyro, env, CREATE_KINDS[kind])
            got = without_template(round_of, redone, f"workspace_{kind}")
            if got is None:
                continue
            mode = got.pop("boot_mode")
            modes[kind][mode] = modes[kind].get(mode, 0) + 1
            for key, value in got.items():
                rounds[kind].setdefault(key, []).append(value)
        for network in (False, True) if i % 2 == 0 else (True, False):
            time.sleep(SETTLE_S)
            name = f"network_{str(network).lower()}"
            run = functools.partial(one_shot, pyro, env, network)
            took = without_template(run, redone, f"run_in_vm_{name}")
            if took is not None:
                one_shots[name].append(took)
    empty = [kind for kind, got in {**rounds, **one_shots}.items() if not got]
    if empty:
        raise RuntimeError(f"every sample of {empty} made a snapshot template: run again")
    report: dict[str, Any] = {"first_use_ms": first}
    for kind in kinds:
        report[f"workspace_{kind}"] = {k: summary(v) for k, v in rounds[kind].items()}
        report[f"workspace_{kind}"]["boot_modes"] = modes[kind]
    adds: dict[str, Any] = {}
    off = report["workspace_off"]
    for kind in kinds[1:]:
        mine = report[f"workspace_{kind}"]
        adds[f"{kind}_minus_off"] = {
            part: {stat: round(mine[part][stat] - off[part][stat], 1) for stat in STATS}
            for part in PARTS
        }
    report["run_in_vm_true"] = {name: summary(v) for name, v in one_shots.items()}
    on, bare = report["run_in_vm_true"]["network_true"], report["run_in_vm_true"]["network_false"]
    adds["run_in_vm_network_true_minus_false"] = {
        stat: round(on[stat] - bare[stat], 1) for stat in STATS
    }
    report["networking_adds_ms"] = adds
    report["samples_thrown_away_for_making_a_snapshot_template"] = redone
    return report


# --- 2. TCP through the VM's network -----------------------------------------------------


def fine(samples: list[float]) -> dict[str, Any]:
    """`summary`, and the median and minimum in microseconds: loopback rounds to 0.0 ms."""
    ordered = sorted(samples)
    median = ordered[round((len(ordered) - 1) / 2)]
    return summary(samples) | {"p50_us": round(median * 1000), "min_us": round(ordered[0] * 1000)}


def rates(got: dict[str, Any], size: int) -> dict[str, Any]:
    mib = size / 2**20
    out: dict[str, Any] = {
        "connect": fine(got["connect_ms"]),
        "echo_round_trip": fine(got["echo_rtt_ms"]),
    }
    send, receive = got["send"], got["receive"]
    assert send["bytes"] == size and receive["bytes"] == size, (send, receive)
    out["send_mib_per_s"] = round(mib / send["seconds"], 1)
    out["send_mib_per_s_by_sink_clock"] = round(mib / send["server_seconds"], 1)
    out["receive_mib_per_s"] = round(mib / receive["seconds"], 1)
    return out


def tcp_paths(
    pyro: Pyro, env: str, net: FakeInternet, size: int, connects: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Guest, pyro-host namespace through the veth, and pyro-host loopback; and the guest's
    DNS lookups of an allowed-by-default name (plain egress)."""
    inet = BenchServer(
        net.inet_ns_path(),
        f"sink:{ADDRESSES.echo}:{SINK_PORT}",
        f"source:{ADDRESSES.echo}:{SOURCE_PORT}",
        f"echo:{ADDRESSES.echo}:{ECHO_PORT}",
    )
    loop = BenchServer(
        net.host_ns_path(),
        f"sink:127.0.0.1:{SINK_PORT}",
        f"source:127.0.0.1:{SOURCE_PORT}",
        f"echo:127.0.0.1:{ECHO_PORT}",
    )
    try:
        remote = {
            "echo": [ADDRESSES.echo, ECHO_PORT],
            "connects": connects,
            "sink": [ADDRESSES.echo, SINK_PORT],
            "source": [ADDRESSES.echo, SOURCE_PORT],
            "bytes": size,
        }
        local = {
            "echo": ["127.0.0.1", ECHO_PORT],
            "connects": connects,
            "sink": ["127.0.0.1", SINK_PORT],
            "source": ["127.0.0.1", SOURCE_PORT],
            "bytes": size,
        }
        wid = pyro.create_workspace(environment=env, network_policy="egress")["workspace_id"]
        try:
            guest_client(pyro, wid, {"echo": remote["echo"], "connects": 3})  # warm the path
            started = time.perf_counter()
            guest = guest_client(pyro, wid, remote)
            guest_wall = (time.perf_counter() - started) * 1000
            resolved = guest_client(pyro, wid, LOOKUPS)
        finally:
            pyro.delete_workspace(wid)
        report = {
            "bytes_each_way": size,
            "connects": connects,
            "guest_to_fake_internet": rates(guest, size) | {"exec_wall_ms": round(guest_wall)},
        }
        references = {
            "pyro_host_ns_to_fake_internet_via_veth": remote,
            "pyro_host_ns_loopback": local,
        }
        for name, spec in references.items():
            report[name] = rates(run_client(net.host_ns_path(), spec), size)
        return report, resolved
    finally:
        inet.stop()
        loop.stop()


# --- 3. allowlist changes on a running workspace -------------------------------------------


def update_times(pyro: Pyro, wid: str, wider: list[str], runs: int) -> dict[str, Any]:
    widen: list[float] = []
    narrow: list[float] = []
    for _ in range(runs):
        timed(widen, lambda: pyro.update_workspace(wid, allow_hosts=wider))
        timed(narrow, lambda: pyro.update_workspace(wid, allow_hosts=ALLOWED))
    return {"widen": summary(widen), "narrow": summary(narrow)}


def quiet(watch: BenchServer, since: float, limit: float) -> tuple[int, bool]:
    """Wait until no connect got through for QUIET_S (at most `limit` s): how many landed
    more than LATE_S after `since`, and whether it went quiet."""
    late, deadline = 0, time.monotonic() + limit
    for landed in watch.accepts(QUIET_S):
        late += landed > since + LATE_S
        if time.monotonic() > deadline:
            return late, False
    return late, True


def effect_times(
    pyro: Pyro, wid: str, watch: BenchServer, target: str, wider: list[str], runs: int
) -> dict[str, Any]:
    """Widen with a guest poller connecting to `target`; when did its first connect land?
    Then narrow again: does anything still get through?"""
    host = target.rsplit(":", 1)[0]
    poller = shlex.join(["python3", "-c", POLLER, host, str(WATCH_PORT), str(POLL_MS / 1000)])
    pyro.exec_workspace(wid, command=f"setsid {poller} >/dev/null 2>&1 &")
    widen: list[float] = []
    narrow: list[float] = []
    effect: list[float] = []
    after_return: list[float] = []
    late, stuck = 0, 0
    try:
        for _ in range(runs):
            if not quiet(watch, time.monotonic(), STUCK_S)[1]:
                raise RuntimeError(f"{target} is reachable before widening")
            began = time.monotonic()
            pyro.update_workspace(wid, allow_hosts=wider)
            returned = time.monotonic()
            landed = next((t for t in watch.accepts(EFFECT_LIMIT_S) if t >= began), None)
            if landed is None:
                raise RuntimeError(f"no connect to {target} got through after widening")
            widen.append((returned - began) * 1000)
            effect.append((landed - began) * 1000)
            after_return.append((landed - returned) * 1000)
            began = time.monotonic()
            pyro.update_workspace(wid, allow_hosts=ALLOWED)
            returned = time.monotonic()
            narrow.append((returned - began) * 1000)
            count, went_quiet = quiet(watch, returned, STUCK_S)
            late += count
            if not went_quiet:  # still reachable: narrow once more, so the next round can run
                stuck += 1
                pyro.update_workspace(wid, allow_hosts=ALLOWED)
    finally:
        stop = "kill $(cat /tmp/bench-poller.pid) && rm /tmp/bench-poller.pid"
        pyro.exec_workspace(wid, command=stop)
    return {
        "target": target,
        "widen_call_with_poller_running": summary(widen),
        "first_connect_landed_after_call_start": summary(effect),
        "first_connect_landed_minus_call_return": summary(after_return),
        "narrow_call_with_poller_running": summary(narrow),
        f"connects_landing_over_{LATE_S * 1000:g}_ms_after_narrow_returned": late,
        f"rounds_still_reachable_{STUCK_S:g}_s_after_narrowing": stuck,
    }


def allowlist_changes(
    pyro: Pyro, env: str, net: FakeInternet, runs: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    watch = BenchServer(net.inet_ns_path(), f"watch:{ADDRESSES.other}:{WATCH_PORT}")
    try:
        view = pyro.create_workspace(environment=env, network_policy="egress", allow_hosts=ALLOWED)
        wid = view["workspace_id"]
        try:
            resolved = guest_client(pyro, wid, LOOKUPS)
            by_cidr = [*ALLOWED, f"{ADDRESSES.other}/32"]
            by_name = [*ALLOWED, "other.pyro.test"]
            report = {
                "from": ALLOWED,
                "update_call_cidr": update_times(pyro, wid, by_cidr, runs),
                "update_call_name": update_times(pyro, wid, by_name, runs),
                "poll_interval_ms": POLL_MS,
                "effect_cidr": effect_times(
                    pyro, wid, watch, f"{ADDRESSES.other}:{WATCH_PORT}", by_cidr, runs
                ),
                "effect_name": effect_times(
                    pyro, wid, watch, f"other.pyro.test:{WATCH_PORT}", by_name, runs
                ),
            }
        finally:
            pyro.delete_workspace(wid)
        return report, resolved
    finally:
        watch.stop()


# --- running it all ------------------------------------------------------------------------


def delete_everything(pyro: Pyro) -> None:
    """Every workspace and VM of this run's private state, whatever happened."""
    for item in pyro.list_workspaces()["workspaces"]:
        with contextlib.suppress(Exception):
            pyro.delete_workspace(item["workspace_id"])
    for row in pyro.vms.store.list_vms():
        with contextlib.suppress(Exception):
            pyro.delete_vm(row["vm_id"])


def leftovers(net: FakeInternet, pyro: Pyro, limit: float = 15.0) -> list[str]:
    """What pyro left in the pyro-host namespace, once the kernel had `limit` s to free it."""
    deadline = time.monotonic() + limit
    while True:
        found = [f"uplink {name}" for name in uplinks(net)]
        found += [f"nftables table {t}" for t in tables(net) if t != HOST_TABLE]
        found += [f"uplink slot {s} held by {v}" for v, s in slots.held(pyro.vms.store).items()]
        found += [f"vm {row['vm_id']}" for row in pyro.vms.store.list_vms()]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def step(report: dict[str, Any], name: str, action: Callable[[], Any]) -> Any:
    """Run one part; what is measured so far goes to stderr, so a failed run keeps it."""
    report["load_average"][f"before_{name}"] = [round(x, 2) for x in os.getloadavg()]
    result = action()
    print(json.dumps({name: result}, default=str), file=sys.stderr, flush=True)
    return result


def measure(pyro: Pyro, net: FakeInternet, args: argparse.Namespace) -> dict[str, Any]:
    env, runs, size = args.environment, args.runs, args.mib * 2**20
    report: dict[str, Any] = {"load_average": {}}
    net.assert_routes_are_ours()  # before any networked VM starts
    report["create"] = step(report, "create", lambda: create_costs(pyro, env, runs))
    tcp, plain = step(report, "tcp", lambda: tcp_paths(pyro, env, net, size, args.connects))
    report["tcp"] = tcp
    allow, filtered = step(report, "allowlist", lambda: allowlist_changes(pyro, env, net, runs))
    report["dns_web_pyro_test_in_guest"] = {
        "egress": dns_report(plain),
        "egress_allow_hosts_web_pyro_test": dns_report(filtered),
    }
    report["allowlist"] = allow
    net.assert_routes_are_ours()
    return report


def dns_report(got: dict[str, Any]) -> dict[str, Any]:
    together = LOOKUPS["resolve_together"][1]
    return {
        "one_lookup": fine(got["resolve_ms"]),
        f"{together}_lookups_at_once_wall": fine(got["resolve_together_ms"]),
    }


def parse_args() -> argparse.Namespace:
    parser = common.options(__doc__, runs=7)
    parser.add_argument("--mib", type=int, default=64, help="MiB sent and received")
    parser.add_argument("--connects", type=int, default=50)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with common.private_run("network", args) as report:
        pyro = Pyro()
        installed = pyro.inspect_environment(args.environment)["installed"]
        if not installed:  # needs the real network: before the harness
            print(f"[bench] building {args.environment} once before timing", file=sys.stderr)
            pyro.environments.ensure(args.environment)
        report["built_before_timing"] = not installed
        report["backend"] = backends.choose(
            pyro.environments.ensure(args.environment)
        ).execution_mode
        with common.inside_fake_internet() as net:
            try:
                report |= measure(pyro, net, args)
            finally:
                delete_everything(pyro)
                report["left_in_pyro_host_ns"] = leftovers(net, pyro)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    if report["left_in_pyro_host_ns"]:
        sys.exit(
            "[bench] pyro left networking behind: " + "; ".join(report["left_in_pyro_host_ns"])
        )


if __name__ == "__main__":
    main()
