"""`pyro`: parse, call one SDK method, format. Errors become `[error] …` and exit 1; usage, 2."""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Callable, Sequence

from pyro_mcp.cli import run as run_cmd
from pyro_mcp.cli.output import EXIT_ERROR, EXIT_USAGE, report_error
from pyro_mcp.errors import PyroError, SystemFault
from pyro_mcp.version import __version__

Handler = Callable[[argparse.Namespace], int]

# The module in pyro_mcp.cli that registers each command, in the order `pyro --help` lists them.
COMMAND_MODULES = {
    "run": "run", "demo": "run", "env": "env", "workspace": "workspace", "mcp": "mcp",
    "doctor": "doctor", "runtime": "runtime",
}  # fmt: skip


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; or, for a known `command`, only that command's module's part of it
    (a command parses and prints the same either way, without importing or building the rest)."""
    parser = argparse.ArgumentParser(
        prog="pyro",
        description="Run commands for AI agents inside disposable Linux microVMs.",
    )
    parser.add_argument("--version", action="version", version=f"pyro-mcp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    known = COMMAND_MODULES.get(command or "")
    for module in dict.fromkeys([known] if known else COMMAND_MODULES.values()):
        importlib.import_module(f"pyro_mcp.cli.{module}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `pyro` on `argv`; without it, as this process's program, on sys.argv."""
    if argv is not None:
        return _main(list(argv))
    try:
        return _main(sys.argv[1:])
    finally:
        # The process ends next. Frozen, the objects it made are left to the OS instead of
        # being walked by each of the collections of interpreter shutdown (~20 ms of a run).
        gc.freeze()


def _main(args_list: list[str]) -> int:
    options, command = run_cmd.split_command(args_list)
    # Top-level options take no value, so a first word not starting with "-" is the command.
    parser = build_parser(options[0] if options and not options[0].startswith("-") else None)
    try:
        args = parser.parse_args(options)
        if command is not None and not getattr(args, "wants_command", False):
            parser.error(
                "`--` followed by a command only goes with `pyro run` and `pyro workspace exec`"
            )
    except SystemExit as exc:  # argparse already printed the usage message
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    args.command = command
    handler: Handler = args.handler
    as_json = bool(getattr(args, "json", False))
    try:
        return handler(args)
    except PyroError as error:
        return report_error(error, as_json)
    except KeyboardInterrupt:
        sys.stderr.write("[error] interrupted\n")
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): nothing left to tell
        return EXIT_ERROR
    except OSError as exc:  # the host said no (permissions, disk full, …): still no traceback
        return report_error(SystemFault(f"host error: {exc}"), as_json)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
