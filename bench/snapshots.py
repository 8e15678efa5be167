"""Snapshots, stop/start and disk tools of workspaces, side by side in one run; one JSON.

Usage:

    .venv/bin/python bench/snapshots.py [--runs 3] [--big-mib 1024] [--files 10000]
                                        [--cache-dir DIR] [--environment debian:12]

The state directory is a private temporary one; standby VMs are off (PYRO_STANDBY=0). Wall
times on the host; p50_ms is the median of --runs.

- snapshot: two workspaces, one that wrote 10 MiB and one that wrote --big-mib MiB (random
  data, outside /workspace too); per round, create_snapshot, then reset_workspace to it, then
  delete_snapshot, on each. Named snapshots are copy-on-write inside the disk's qcow2 image.
- stop_start: a 1 GiB guest (mem_mib=1024) running a service; stop (its memory written out)
  and start (resumed), next to a start whose memory file was dropped first (a cold boot on
  the same disk). Reported with what a stopped workspace holds on the host: VMM processes
  (none), the memory file and the disk's allocated bytes.
- disk_list: --files files in /workspace; list_workspace_disk(recursive=True) of the stopped
  workspace (a helper VM boots, reads, ends) next to list_workspace_files(recursive=True) of
  the started one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from vm_engine import summary

from pyro_mcp import Pyro
from pyro_mcp.runtime.workspaces import suspend


def timed(samples: dict[str, list[float]], key: str, action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = action()
    samples.setdefault(key, []).append(round((time.perf_counter() - started) * 1000, 1))
    return result


def write(pyro: Pyro, wid: str, mib: int) -> None:
    half = max(mib // 2, 1)
    command = (
        f"head -c {half}M /dev/urandom > /workspace/data.bin && "
        f"head -c {mib - half}M /dev/urandom > /var/tmp-data.bin && sync"
    )
    done = pyro.exec_workspace(wid, command=command, timeout_seconds=1800)
    assert done["exit_code"] == 0, done


def snapshot_paths(pyro: Pyro, env: str, runs: int, big: int) -> dict[str, Any]:
    sizes = {"wrote_10_mib": 10, f"wrote_{big}_mib": big}
    wids = {}
    for key, mib in sizes.items():
        wids[key] = pyro.create_workspace(environment=env, ttl_seconds=3600)["workspace_id"]
        write(pyro, wids[key], mib)
    samples: dict[str, dict[str, list[float]]] = {key: {} for key in sizes}
    try:
        for n in range(runs):
            for key, wid in wids.items():
                one_round(pyro, wid, f"s{n}", samples[key])
        disks = {k: disk_bytes(pyro, w) for k, w in wids.items()}
    finally:
        for wid in wids.values():
            pyro.delete_workspace(wid)
    return {
        key: {"disk_allocated_bytes": disks[key],
              **{path: summary(v) for path, v in found.items()}}
        for key, found in samples.items()
    }  # fmt: skip


def one_round(pyro: Pyro, wid: str, name: str, into: dict[str, list[float]]) -> None:
    timed(into, "create_snapshot", lambda: pyro.create_snapshot(wid, name))
    timed(into, "reset_to_snapshot", lambda: pyro.reset_workspace(wid, snapshot=name))
    timed(into, "delete_snapshot", lambda: pyro.delete_snapshot(wid, name))


def disk_bytes(pyro: Pyro, wid: str) -> int:
    row = pyro.workspaces.row(wid)
    return int(pyro.workspaces.disk_path(row).stat().st_blocks * 512)


def stop_start(pyro: Pyro, env: str, runs: int) -> dict[str, Any]:
    wid = pyro.create_workspace(environment=env, mem_mib=1024, ttl_seconds=3600)["workspace_id"]
    pyro.start_service(wid, "keeper", command="exec sleep 100000")
    samples: dict[str, list[float]] = {}
    held: dict[str, Any] = {}
    try:
        for _ in range(runs):
            stopped = timed(samples, "stop_keeping_memory", lambda: pyro.stop_workspace(wid))
            assert stopped["workspace_stop"]["memory_kept"], stopped
            held = stopped_footprint(pyro, wid)
            started = timed(samples, "start_resumed", lambda: pyro.start_workspace(wid))
            assert started["workspace_start"]["resumed"], started
            pyro.stop_workspace(wid)
            suspend.discard(pyro.workspaces.directory(wid))  # as if the memory were lost
            timed(samples, "start_cold_boot_same_disk", lambda: pyro.start_workspace(wid))
            pyro.start_service(wid, "keeper", command="exec sleep 100000")
    finally:
        pyro.delete_workspace(wid)
    return {"guest_mem_mib": 1024, "stopped_workspace_holds": held,
            **{k: summary(v) for k, v in samples.items()}}  # fmt: skip


def stopped_footprint(pyro: Pyro, wid: str) -> dict[str, Any]:
    directory = pyro.workspaces.directory(wid)
    root = str(pyro.workspaces.store.root)
    state = directory / suspend.DIR / suspend.STATE
    return {
        "vmm_processes": len([p for p in Path("/proc").iterdir() if _qemu_under(p, root)]),
        "memory_file_bytes": state.stat().st_blocks * 512,
        "disk_allocated_bytes": disk_bytes(pyro, wid),
    }


def _qemu_under(proc: Path, root: str) -> bool:
    """A QEMU of this run's state directory (its cwd is a VM directory there)."""
    try:
        if not proc.name.isdigit() or not (proc / "comm").read_text().startswith("qemu"):
            return False
        return os.readlink(proc / "cwd").startswith(root)
    except OSError:
        return False


def disk_list(pyro: Pyro, env: str, runs: int, files: int) -> dict[str, Any]:
    wid = pyro.create_workspace(environment=env, ttl_seconds=3600)["workspace_id"]
    make = f"mkdir -p many && cd many && seq 1 {files} | xargs touch && sync"
    assert pyro.exec_workspace(wid, command=make, timeout_seconds=600)["exit_code"] == 0
    samples: dict[str, list[float]] = {}
    try:
        for _ in range(runs):
            got = timed(samples, "list_workspace_files_started",
                        lambda: pyro.list_workspace_files(wid, recursive=True))  # fmt: skip
            pyro.stop_workspace(wid)
            disk = timed(samples, "list_workspace_disk_stopped",
                         lambda: pyro.list_workspace_disk(wid, recursive=True))  # fmt: skip
            assert len(disk["entries"]) == len(got["entries"]) >= files, len(disk["entries"])
            pyro.start_workspace(wid)
    finally:
        pyro.delete_workspace(wid)
    return {"files": files, **{k: summary(v) for k, v in samples.items()}}


def main() -> None:
    parser = common.options(__doc__, runs=3)
    parser.add_argument("--big-mib", type=int, default=1024, help="what the big workspace wrote")
    parser.add_argument("--files", type=int, default=10000, help="files for the disk list")
    args = parser.parse_args()
    with common.private_run("snapshots", args) as report:
        pyro = Pyro()
        report["snapshot"] = snapshot_paths(pyro, args.environment, args.runs, args.big_mib)
        report["stop_start"] = stop_start(pyro, args.environment, args.runs)
        report["disk_list"] = disk_list(pyro, args.environment, args.runs, args.files)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
