"""Entry point: `python -m pyro_mcp.supervisor VM_DIR --ready-fd N`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from pyro_mcp.supervisor.main import run


def main() -> None:
    parser = argparse.ArgumentParser(prog="pyro-supervisor")
    parser.add_argument("vm_dir", type=Path)
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args()
    code = run(args.vm_dir, args.ready_fd)
    # Everything of the VM is gone and recorded by now; skipping the interpreter's orderly
    # shutdown (thread joins, finalisers) makes a delete return milliseconds sooner.
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
