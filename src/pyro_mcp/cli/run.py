"""`pyro run ENV [options] -- CMD ...` and `pyro demo`.

Everything after the first `--` is the command and never reaches argparse, so options may
stand before or after the environment on any Python. The argv reaches the guest exactly as
given; a single argument with spaces in it is a shell command line and runs with `sh -lc`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyro_mcp.cli.output import emit_json, stream_chunk
from pyro_mcp.environments import catalog
from pyro_mcp.errors import InvalidArgumentError


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """(options part, command after the first `--` or None)."""
    if "--" not in argv:
        return argv, None
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


def as_command(words: list[str]) -> str | list[str]:
    if len(words) == 1 and any(c.isspace() for c in words[0]):
        return words[0]
    return words


def add_vm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vcpu-count", type=int, default=1, help="virtual CPUs (1-8)")
    parser.add_argument("--mem-mib", type=int, default=1024, help="guest memory (256-32768)")
    parser.add_argument("--ttl-seconds", type=int, default=600, help="VM lifetime limit")
    parser.add_argument(
        "--network", action="store_true", help="give the VM egress to public addresses only"
    )
    parser.add_argument(
        "--allow-host-compat",
        action="store_true",
        help="accepted for compatibility; commands never run on the host",
    )


def register(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run one command in a fresh VM: pyro run ENV [options] -- CMD [ARGS...]",
        description="Run one command in a fresh VM that is deleted afterwards.",
    )
    run.add_argument("environment", metavar="ENVIRONMENT", help=", ".join(catalog.names()))
    add_vm_options(run)
    run.add_argument("--timeout-seconds", type=int, default=30, help="command timeout")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.set_defaults(handler=_run, wants_command=True)

    demo = commands.add_parser("demo", help="run `git --version` in a fresh debian:12 VM")
    demo.add_argument("--network", action="store_true", help="with egress to public addresses")
    demo.set_defaults(handler=_demo)


def _phase(message: str) -> None:
    sys.stderr.write(f"[run] phase={message}\n")
    sys.stderr.flush()


def _run(args: argparse.Namespace) -> int:
    if not args.command:
        raise InvalidArgumentError(
            "no command given", hint="put the command after `--`: pyro run debian:12 -- true"
        )
    quiet = args.json
    from pyro_mcp.sdk import Pyro

    result = Pyro().run_in_vm(
        environment=args.environment,
        command=as_command(args.command),
        vcpu_count=args.vcpu_count,
        mem_mib=args.mem_mib,
        timeout_seconds=args.timeout_seconds,
        ttl_seconds=args.ttl_seconds,
        network=args.network,
        allow_host_compat=args.allow_host_compat,
        on_output=None if quiet else stream_chunk,
        on_phase=None if quiet else _phase,
    )
    if quiet:
        emit_json(result)
    else:
        truncated = result["stdout_truncated"] or result["stderr_truncated"]
        sys.stderr.write(
            f"[run] environment={result['environment']} execution_mode="
            f"{result['execution_mode']} exit_code={result['exit_code']} "
            f"duration_ms={result['duration_ms']}"
            + (" timed_out=true" if result["timed_out"] else "")
            + (" output_truncated=true" if truncated else "")
            + "\n"
        )
    return int(result["exit_code"]) & 0xFF


def _demo(args: argparse.Namespace) -> int:
    from pyro_mcp.sdk import Pyro

    result = Pyro().run_in_vm(
        environment=catalog.DEFAULT_ENVIRONMENT,
        command=["git", "--version"],
        network=args.network,
    )
    emit_json(result)
    return int(result["exit_code"]) & 0xFF
