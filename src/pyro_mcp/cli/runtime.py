"""`pyro runtime install firecracker`: fetch the pinned official Firecracker release."""

from __future__ import annotations

import argparse
from typing import Any

from pyro_mcp.cli.output import show


def register(commands: Any) -> None:
    runtime = commands.add_parser("runtime", help="install VMM binaries into the cache")
    sub = runtime.add_subparsers(dest="runtime_command", metavar="SUBCOMMAND", required=True)
    install = sub.add_parser("install", help="download and verify a VMM release")
    install.add_argument("component", choices=["firecracker"], help="what to install")
    install.add_argument("--version", dest="fc_version", default=None, help="release, e.g. 1.12.1")
    install.add_argument("--json", action="store_true", help="print the result as JSON")
    install.set_defaults(handler=_install)


def _install(args: argparse.Namespace) -> int:
    from pyro_mcp.sdk import Pyro

    result = Pyro().install_firecracker(args.fc_version)

    def render(data: dict[str, Any]) -> None:
        state = "already installed" if data["already_installed"] else "installed"
        print(f"Firecracker {data['version']} {state}")
        print(f"firecracker: {data['firecracker_bin']}  sha256:{data['firecracker_sha256']}")
        print(f"jailer:      {data['jailer_bin']}  sha256:{data['jailer_sha256']}")

    show(result, args.json, render)
    return 0
