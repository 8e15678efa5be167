"""Entry point: `python -m pyro_mcp.supervisor VM_DIR --ready-fd N`."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_mcp.supervisor.main import run


def main() -> int:
    parser = argparse.ArgumentParser(prog="pyro-supervisor")
    parser.add_argument("vm_dir", type=Path)
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args()
    return run(args.vm_dir, args.ready_fd)


if __name__ == "__main__":
    raise SystemExit(main())
