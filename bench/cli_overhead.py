"""CLI overhead: what `pyro` adds on top of the SDK call it makes, side by side in one run.

Prints one JSON document. Run it on an otherwise idle machine:

    .venv/bin/python bench/cli_overhead.py [--runs 11] [--environment debian:12]

Paths timed (wall time; p50_ms is the median), round-robin so that load drifting on the
machine hits each path alike:
- cli_help:         `pyro --help`, a subprocess of the venv's `pyro`;
- cli_run:          `pyro run ENV -- true`, a subprocess;
- cli_run_unknown_env: `pyro run no-such-env:1 -- true`, which fails at the SDK call: the
  CLI's fixed cost (interpreter, imports, parsing, exit) without a VM's variance, which in
  `standby_off` (a restore each run, spread over ~100 ms) blurs the differences of medians;
- sdk_in_process:   `Pyro().run_in_vm(environment=ENV, command=["true"])` in this process;
- sdk_subprocess:   the same call in `python -c`, so interpreter start and imports included;
- python_start and sdk_import: `python -c pass` and `python -c "import pyro_mcp.sdk"`, to say
  where the difference goes.
Both VM modes are measured: `defaults` (standby VMs on; every sample first waits for a ready
standby, so each VM run claims one) and `standby_off` (PYRO_STANDBY=0: each run restores the
snapshot). Every sample starts half a second after the last, once the host is quiet again.
The default cache is used; an environment not built yet is built once before any timing
(`built_before_timing` says so). `project_modules_with_fresh_bytecode` below all means every
start compiled the rest: run `python -m compileall src` (scripts/bootstrap.sh does).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vm_engine import summary
from warm_start import timed, wait_for_standby

import pyro_mcp
from pyro_mcp import Pyro

TARGET_MS = 150
SETTLE_S = 0.5
MODES: dict[str, str | None] = {"defaults": None, "standby_off": "0"}  # PYRO_STANDBY


@contextmanager
def standby_setting(value: str | None) -> Iterator[None]:
    saved = os.environ.pop("PYRO_STANDBY", None)
    if value is not None:
        os.environ["PYRO_STANDBY"] = value
    try:
        yield
    finally:
        os.environ.pop("PYRO_STANDBY", None)
        if saved is not None:
            os.environ["PYRO_STANDBY"] = saved


def subprocess_action(argv: list[str], status: int = 0) -> Callable[[], Any]:
    def run() -> None:
        done = subprocess.run(argv, capture_output=True, check=False)
        assert done.returncode == status, done.stderr.decode(errors="replace")

    return run


def sdk_call(env: str) -> Callable[[], Any]:
    def call() -> None:
        result = Pyro().run_in_vm(environment=env, command=["true"])
        assert result["exit_code"] == 0, result

    return call


def paths(env: str) -> dict[str, Callable[[], Any]]:
    python = sys.executable
    pyro = str(Path(python).parent / "pyro")
    sdk_code = f"from pyro_mcp import Pyro; Pyro().run_in_vm(environment={env!r}, command=['true'])"
    return {
        "cli_help": subprocess_action([pyro, "--help"]),
        "cli_run": subprocess_action([pyro, "run", env, "--", "true"]),
        "cli_run_unknown_env": subprocess_action([pyro, "run", "no-such-env:1", "--", "true"], 1),
        "sdk_in_process": sdk_call(env),
        "sdk_subprocess": subprocess_action([python, "-c", sdk_code]),
        "python_start": subprocess_action([python, "-c", "pass"]),
        "sdk_import": subprocess_action([python, "-c", "import pyro_mcp.sdk"]),
    }


def measure(pyro: Pyro, env: str, standby: bool, runs: int) -> dict[str, Any]:
    actions = paths(env)
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for action in actions.values():  # warm up: the snapshot, the first standby, page cache
        action()
    for _ in range(runs):
        for name, action in actions.items():
            if standby:  # every VM run claims one and starts its replacement
                wait_for_standby(pyro)
            # The last VM's teardown, or a replacement just recorded as ready, still uses CPU.
            time.sleep(SETTLE_S)
            timed(samples[name], action)
    pyro.vms.clear_standby()
    report: dict[str, Any] = {name: summary(values) for name, values in samples.items()}
    for sdk in ("sdk_in_process", "sdk_subprocess"):
        report[f"cli_run_minus_{sdk}"] = {
            stat: round(report["cli_run"][stat] - report[sdk][stat], 1)
            for stat in ("p50_ms", "min_ms")
        }
    added = report["cli_run_minus_sdk_in_process"]["p50_ms"]
    report["within_target"] = added <= TARGET_MS
    return report


def fresh_bytecode(source: Path) -> bool:
    """Whether Python will load `source` from its cached .pyc instead of compiling it."""
    try:
        head = Path(importlib.util.cache_from_source(str(source))).read_bytes()[:16]
    except OSError:
        return False
    if head[:4] != importlib.util.MAGIC_NUMBER:
        return False
    if int.from_bytes(head[4:8], "little"):  # hash-based: checked (or not) by its own rule
        return True
    stat = source.stat()
    stamp, size = int.from_bytes(head[8:12], "little"), int.from_bytes(head[12:16], "little")
    return stamp == int(stat.st_mtime) & 0xFFFFFFFF and size == stat.st_size & 0xFFFFFFFF


def project_bytecode() -> str:
    """How many of pyro_mcp's modules have fresh bytecode, as "fresh/all". An editable install's
    have none unless compiled, and PYTHONDONTWRITEBYTECODE stops Python from writing them."""
    sources = list(Path(pyro_mcp.__file__).parent.rglob("*.py"))
    fresh = sum(fresh_bytecode(source) for source in sources)
    if fresh < len(sources):
        print(
            f"[bench] only {fresh}/{len(sources)} pyro_mcp modules have fresh bytecode; every "
            "start compiles the rest (python -m compileall src)",
            file=sys.stderr,
        )
    return f"{fresh}/{len(sources)}"


def ensure_built(pyro: Pyro, env: str) -> bool:
    """Build `env` now unless it is installed; True when it had to be built."""
    if pyro.inspect_environment(env)["installed"]:
        return False
    print(f"[bench] building {env} once before timing", file=sys.stderr)
    pyro.environments.ensure(env)
    return True


def parse_args() -> argparse.Namespace:
    options = argparse.ArgumentParser(description="What `pyro` adds on top of the SDK.")
    options.add_argument("--runs", type=int, default=11, help="repetitions of each path")
    options.add_argument("--environment", default="debian:12")
    return options.parse_args()


def main() -> None:
    args = parse_args()
    pyro = Pyro()
    report: dict[str, Any] = {
        "benchmark": "cli_overhead",
        "environment": args.environment,
        "runs": args.runs,
        "built_before_timing": ensure_built(pyro, args.environment),
        "project_modules_with_fresh_bytecode": project_bytecode(),
        "target_cli_minus_sdk_in_process_p50_ms": TARGET_MS,
        "load_average_at_start": os.getloadavg(),
    }
    for mode, value in MODES.items():
        with standby_setting(value):
            report[mode] = measure(pyro, args.environment, value != "0", args.runs)
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
