"""What a networked VM's supervisor spends on its network, without a VM: in a fresh
interpreter (as a supervisor is), `VmNetwork.open()` (before the VMM may start) and `wire()`
(which runs beside the restore), next to the same interpreter's start-up. Each sample runs in a
network namespace of its own that dies with it, so nothing touches this host's network.

    .venv/bin/python bench/network_setup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SAMPLE = r"""
import json, os, time
t0 = time.perf_counter()
from pyro_mcp.network.vm import NetworkPlan, VmNetwork
t1 = time.perf_counter()
net = VmNetwork(NetworkPlan(3, ("web.pyro.test",)))
net.open()
t2 = time.perf_counter()
import pyroute2, dns.message  # what wire() imports first, timed on its own
t3 = time.perf_counter()
net.wire()
t4 = time.perf_counter()
net.close()
t5 = time.perf_counter()
ms = lambda a, b: round((b - a) * 1000, 2)
print(json.dumps({"import_vm_module": ms(t0, t1), "open": ms(t1, t2),
                  "import_libraries": ms(t2, t3), "wire_after_imports": ms(t3, t4),
                  "close": ms(t4, t5)}))
"""
BARE = "import time; t = time.perf_counter(); print('{}')"


def _private_namespace() -> None:
    os.unshare(os.CLONE_NEWNET)


def sample(code: str) -> tuple[dict[str, float], float]:
    env = {**os.environ, "PYRO_DNS_UPSTREAM": "127.0.0.1"}
    start = _now()
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env,
        preexec_fn=_private_namespace, check=True,
    )  # fmt: skip
    return json.loads(done.stdout), round((_now() - start) * 1000, 2)


def _now() -> float:
    import time

    return time.perf_counter()


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values), 2), "min_ms": min(values),
            "max_ms": max(values)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    parts: dict[str, list[float]] = {}
    bare, whole = [], []
    for _ in range(runs):
        bare.append(sample(BARE)[1])
        found, wall = sample(SAMPLE)
        whole.append(wall)
        for key, value in found.items():
            parts.setdefault(key, []).append(value)
    wire = [
        a + b for a, b in zip(parts["import_libraries"], parts["wire_after_imports"], strict=True)
    ]
    print(json.dumps({
        "benchmark": "network_setup",
        "runs": runs,
        "load_average": os.getloadavg(),
        "interpreter_start_and_exit": summary(bare),
        "process_with_network_setup": summary(whole),
        "parts": {key: summary(values) for key, values in parts.items()},
        "wire_total_beside_the_restore": summary(wire),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
