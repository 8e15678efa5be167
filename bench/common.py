"""What every benchmark here shares: its options, a private state directory with standby VMs
off, and (for networked ones) running pyro inside the tests' fake internet."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from framework.fake_internet import ADDRESSES, FakeInternet, fake_internet
from framework.net_vms import inside


def options(doc: str | None, runs: int) -> argparse.ArgumentParser:
    """--runs, --environment and --cache-dir; a benchmark adds its own."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=runs, help="repetitions of each timed path")
    parser.add_argument("--environment", default="debian:12")
    parser.add_argument("--cache-dir", help="PYRO_CACHE_DIR (default: the user's cache)")
    return parser


@contextlib.contextmanager
def private_run(name: str, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """A state directory of the run's own (removed after), standby VMs off; yields the report
    with what every benchmark says about its run."""
    if args.cache_dir:
        os.environ["PYRO_CACHE_DIR"] = str(Path(args.cache_dir).resolve())
    state = Path(tempfile.mkdtemp(prefix=f"pyro-bench-{name}-"))
    os.environ["PYRO_STATE_DIR"] = str(state)
    os.environ["PYRO_STANDBY"] = "0"
    try:
        yield {
            "benchmark": name,
            "environment": args.environment,
            "runs": args.runs,
            "standby": "off (PYRO_STANDBY=0)",
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def inside_fake_internet() -> Iterator[FakeInternet]:
    """This thread (and every VM it starts) in the fake internet's pyro-host namespace, its
    routes checked first, the guests' resolver the test DNS server."""
    with fake_internet() as net:
        os.environ["PYRO_DNS_UPSTREAM"] = ADDRESSES.dns
        with inside(net):
            yield net
