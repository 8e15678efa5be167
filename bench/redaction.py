"""Redaction benchmark: 16 MiB of exec-like output through the streaming Redactor; one JSON.

No VM: this measures the redactor itself (pyro_mcp.protocol.redaction), on this host's Python.
The guest runs the same code under its own CPU (QEMU TCG here is several times slower), so the
guest's cost is this figure scaled by the guest's speed. Usage:

    .venv/bin/python bench/redaction.py [--runs 3] [--mib 16] [--chunk-kib 64]

Inputs (each --mib MiB, fed in --chunk-kib chunks, as the agent reads a pipe):
- text: English-like log lines, with one secret occurrence every 64 KiB when secrets are set;
- hex: lowercase hex digits, the worst case for the hex and base64 patterns (every position
  starts a partial match).
Paths: no redactor (copy only: join of the chunks), then 0, 1 and 8 secrets of 32 bytes.
Reported: MB/s (10^6 bytes per second) median of --runs, and the slowdown against the copy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from pyro_mcp.protocol.redaction import MARKER, Redactor

_LINE = b"2026-12-07T16:48:38Z INFO worker[42]: processed request id=%06d in 12ms (ok)\n"


def make_input(kind: str, size: int, secret: bytes | None) -> bytes:
    if kind == "hex":
        data = bytearray(os.urandom(size // 2 + 1).hex().encode()[:size])
    else:
        lines = bytearray()
        n = 0
        while len(lines) < size:
            lines += _LINE % n
            n += 1
        data = lines[:size]
    if secret is not None:
        for at in range(1000, size - len(secret), 64 * 1024):
            data[at : at + len(secret)] = secret
    return bytes(data)


def run_once(data: bytes, chunk: int, secrets: list[bytes] | None) -> tuple[float, bytes]:
    started = time.perf_counter()
    if secrets is None:
        out = b"".join(data[i : i + chunk] for i in range(0, len(data), chunk))
    else:
        redactor = Redactor(secrets)
        pieces = [redactor.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)]
        out = b"".join(pieces) + redactor.flush()
    return time.perf_counter() - started, out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--chunk-kib", type=int, default=64)
    args = parser.parse_args()
    size, chunk = args.mib * 1024 * 1024, args.chunk_kib * 1024
    secrets = [os.urandom(16).hex().encode() for _ in range(8)]
    report: dict[str, object] = {
        "benchmark": "redaction",
        "python": sys.version.split()[0],
        "input_bytes": size,
        "chunk_bytes": chunk,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    results: dict[str, dict[str, object]] = {}
    for kind in ("text", "hex"):
        data = make_input(kind, size, secrets[0])
        paths: dict[str, list[bytes] | None] = {
            "copy_only": None,
            "secrets_0": [],
            "secrets_1": secrets[:1],
            "secrets_8": secrets,
        }
        base = None
        for name, chosen in paths.items():
            times = []
            for _ in range(args.runs):
                elapsed, out = run_once(data, chunk, chosen)
                times.append(elapsed)
            if chosen:
                assert secrets[0] not in out and MARKER in out
            seconds = statistics.median(times)
            base = seconds if base is None else base
            results[f"{kind}/{name}"] = {
                "median_s": round(seconds, 4),
                "mb_per_s": round(size / seconds / 1e6, 1),
                "slowdown_vs_copy": round(seconds / base, 1),
            }
    report["results"] = results
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
