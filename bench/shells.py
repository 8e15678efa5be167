"""Shell benchmark: interactive shell round trips and the wait for quiet, next to exec; one JSON.

One workspace, one shell, rounds interleaved so that load drifting on the machine hits each
path alike. Wall times on the host, p50_ms the median. Usage:

    .venv/bin/python bench/shells.py [--runs 20] [--cache-dir DIR] [--environment debian:12]

The state directory is a private temporary one; standby VMs are off (PYRO_STANDBY=0).

- runtime (what a user of WorkspaceShells, and later the SDK, sees; every call holds the
  workspace's use lock, reconciles its record and opens a new connection with a handshake):
  - exec_true: exec_workspace(`true`), the reference;
  - shell_read_no_wait: read with nothing new to read;
  - shell_echo_round_trip: write `echo y<n>` and read (wait_for_idle_ms=20) until the echo
    shows, write included;
  - shell_read_idle_100ms_over_idle: a read with wait_for_idle_ms=100 on a quiet shell, minus
    the 100 ms asked for.
- agent (one persistent connection to the guest agent, no runtime): ping, exec `true`,
  shell.read with no wait, and the idle-100 read minus 100 ms: what the guest and the
  channel cost without the runtime's per-call work.
- host_poll_idle_100ms_over_idle: 3.11's way of waiting (the host reads every 50 ms until
  100 ms pass with no new output), minus 100 ms, on the same persistent connection.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import common
from vm_engine import summary

from pyro_mcp import Pyro
from pyro_mcp.agent_client import shells as guest
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.runtime import launch
from pyro_mcp.runtime.workspaces.shells import WorkspaceShells

IDLE_MS = 100
POLL_S = 0.05


def timed(samples: list[float], action: Callable[[], Any], minus_ms: float = 0.0) -> Any:
    started = time.perf_counter()
    result = action()
    samples.append((time.perf_counter() - started) * 1000 - minus_ms)
    return result


class Bench:
    def __init__(self, pyro: Pyro, wid: str) -> None:
        self.pyro, self.wid = pyro, wid
        self.shells: WorkspaceShells = pyro.manager.shells
        self.sid = self.shells.open(wid)["shell_id"]
        self.cursor = self.settle()
        self.samples: dict[str, list[float]] = {}

    def settle(self) -> int:
        """Read until the shell is quiet; returns the cursor after everything."""
        got = self.shells.read(self.wid, self.sid, cursor=0, wait_for_idle_ms=300)
        while got["truncated"]:
            got = self.shells.read(self.wid, self.sid, cursor=got["next_cursor"])
        return int(got["next_cursor"])

    def sample(self, name: str, action: Callable[[], Any], minus_ms: float = 0.0) -> Any:
        return timed(self.samples.setdefault(name, []), action, minus_ms)

    def echo_round_trip(self, n: int) -> None:
        """Type `echo y<n>` and read until its output line (not the echoed command) shows."""
        line = re.compile(rf"[\r\n]y{n}\r\n")
        self.shells.write(self.wid, self.sid, input=f"echo y{n}")
        seen = ""
        while not line.search(seen):
            got = self.shells.read(self.wid, self.sid, cursor=self.cursor, wait_for_idle_ms=20)
            self.cursor, seen = got["next_cursor"], seen + got["output"]

    def runtime_round(self, n: int) -> None:
        self.sample("exec_true", lambda: self.pyro.exec_workspace(self.wid, command=["true"]))
        self.sample("shell_read_no_wait", lambda: self.read())
        self.sample("shell_echo_round_trip", lambda: self.echo_round_trip(n))
        self.cursor = self.settle_from(self.cursor)
        self.sample(
            "shell_read_idle_100ms_over_idle",
            lambda: self.read(wait_for_idle_ms=IDLE_MS),
            minus_ms=IDLE_MS,
        )

    def read(self, **kwargs: Any) -> None:
        got = self.shells.read(self.wid, self.sid, cursor=self.cursor, **kwargs)
        self.cursor = got["next_cursor"]

    def settle_from(self, cursor: int) -> int:
        return int(
            self.shells.read(self.wid, self.sid, cursor=cursor, wait_for_idle_ms=200)["next_cursor"]
        )

    def agent_round(self, client: GuestClient) -> None:
        sid, cursor = self.sid, self.cursor
        self.sample("agent_ping", lambda: client.ping())
        self.sample("agent_exec_true", lambda: client.exec(["true"], timeout=30))
        self.sample(
            "agent_shell_read_no_wait", lambda: guest.read_shell(client, sid, cursor=cursor)
        )
        self.sample(
            "agent_shell_read_idle_100ms_over_idle",
            lambda: guest.read_shell(client, sid, cursor=cursor, wait_for_idle_ms=IDLE_MS),
            minus_ms=IDLE_MS,
        )
        self.sample(
            "host_poll_idle_100ms_over_idle",
            lambda: host_poll(client, sid, cursor),
            minus_ms=IDLE_MS,
        )


def host_poll(client: GuestClient, shell_id: str, cursor: int) -> None:
    """3.11's wait: read every 50 ms until 100 ms pass with no new output."""
    quiet_since = time.monotonic()
    while True:
        got = guest.read_shell(client, shell_id, cursor=cursor)
        if got.output:
            cursor, quiet_since = got.next_cursor, time.monotonic()
        elif time.monotonic() - quiet_since >= IDLE_MS / 1000:
            return
        time.sleep(POLL_S)


def parse_args() -> argparse.Namespace:
    return common.options(__doc__, runs=20).parse_args()


def main() -> None:
    args = parse_args()
    with common.private_run("shells", args) as report:
        _measure(args, report)
    print(json.dumps(report, indent=2))


def _measure(args: argparse.Namespace, report: dict[str, Any]) -> None:
    pyro = Pyro()
    pyro.environments.ensure(args.environment)
    wid = pyro.create_workspace(environment=args.environment)["workspace_id"]
    try:
        bench = Bench(pyro, wid)
        report["execution_mode"] = pyro.status_workspace(wid)["execution_mode"]
        with (
            pyro.workspaces.using(wid, "bench") as (_, vm_dir),
            launch.connect(vm_dir) as client,
        ):
            for n in range(args.runs):
                bench.runtime_round(n)
                bench.agent_round(client)
        report["timings_ms"] = {k: summary(v) for k, v in bench.samples.items()}
    finally:
        pyro.delete_workspace(wid)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]


if __name__ == "__main__":
    main()
