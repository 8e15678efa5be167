"""`pyro workspace shell …`: interactive PTY shells that live in the workspace's guest.

Summaries go to stderr, so stdout carries only what a script wants: the shell's output for
`read`, the id for `open --id-only`, or the JSON with `--json`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyro_mcp.cli import workspace as ws
from pyro_mcp.cli.output import emit_json

SIGNALS = ("HUP", "INT", "TERM", "KILL")


def register(sub: Any) -> None:
    shell = ws.group(sub, "shell", "interactive shells in a workspace", parser_class=ws.Intermixed)
    opened = ws.leaf(
        shell, "open", "start a shell on a PTY in the workspace", _open, json_flag=False
    )
    opened.add_argument("workspace_id", metavar="WORKSPACE_ID")
    opened.add_argument("--cwd", default="/workspace", help="inside /workspace (default)")
    opened.add_argument("--cols", type=int, default=120, help="terminal width (default 120)")
    opened.add_argument("--rows", type=int, default=30, help="terminal height (default 30)")
    ws.add_secret_env(opened)
    output = opened.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the result as JSON")
    output.add_argument("--id-only", action="store_true", help="print only the shell ID")

    read = ws.on_workspace(
        shell, "read", "print the shell's output from a cursor", _read, "shell_id"
    )
    read.add_argument("--cursor", type=int, default=0, help="from here (a previous next_cursor)")
    read.add_argument("--max-chars", type=int, default=65536, help="at most this many characters")
    read.add_argument("--plain", action="store_true", help="render as a terminal shows it")
    read.add_argument(
        "--wait-for-idle-ms", type=int, help="first wait until output is quiet this long (1-10000)"
    )

    write = ws.on_workspace(shell, "write", "type into the shell", _write, "shell_id")
    write.add_argument("--input", required=True, help="the text to type")
    write.add_argument("--no-newline", action="store_true", help="do not press Enter after it")

    signal = ws.on_workspace(
        shell, "signal", "signal the shell's foreground job", _signal, "shell_id"
    )
    signal.add_argument("--signal", choices=SIGNALS, default="INT", help="default: INT")

    resize = ws.on_workspace(shell, "resize", "change the shell's window size", _resize, "shell_id")
    resize.add_argument("--cols", type=int, required=True)
    resize.add_argument("--rows", type=int, required=True)

    ws.on_workspace(shell, "close", "end the shell and everything it started", _close, "shell_id")


def _summary(tag: str, shell: dict[str, Any], **extra: Any) -> None:
    fields = {
        "workspace_id": shell["workspace_id"], "shell_id": shell["shell_id"],
        "state": shell["state"], "cwd": shell["cwd"], "size": f"{shell['cols']}x{shell['rows']}",
        **extra,
    }  # fmt: skip
    if shell.get("exit_code") is not None:
        fields["exit_code"] = shell["exit_code"]
    sys.stderr.write(f"[{tag}] " + " ".join(f"{k}={v}" for k, v in fields.items()) + "\n")


def _open(args: argparse.Namespace) -> int:
    shell = ws.sdk().open_shell(
        args.workspace_id, cwd=args.cwd, cols=args.cols, rows=args.rows,
        secret_env=ws.secret_env(args),
    )  # fmt: skip
    if args.json:
        emit_json(shell)
    elif args.id_only:
        print(shell["shell_id"])
    else:
        _summary("workspace-shell-open", shell)
    return 0


def _read(args: argparse.Namespace) -> int:
    read = ws.sdk().read_shell(
        args.workspace_id, args.shell_id, cursor=args.cursor, max_chars=args.max_chars,
        plain=args.plain, wait_for_idle_ms=args.wait_for_idle_ms,
    )  # fmt: skip
    if args.json:
        emit_json(read)
        return 0
    sys.stdout.write(read["output"])
    sys.stdout.flush()
    _summary(
        "workspace-shell-read", read, cursor=read["cursor"], next_cursor=read["next_cursor"],
        truncated=str(read["truncated"]).lower(), plain=str(read["plain"]).lower(),
    )  # fmt: skip
    return 0


def _write(args: argparse.Namespace) -> int:
    done = ws.sdk().write_shell(
        args.workspace_id, args.shell_id, input=args.input, append_newline=not args.no_newline
    )
    return _done(args, "workspace-shell-write", done, input_length=done["input_length"])


def _signal(args: argparse.Namespace) -> int:
    done = ws.sdk().signal_shell(args.workspace_id, args.shell_id, signal_name=args.signal)
    return _done(args, "workspace-shell-signal", done, signal=done["signal"])


def _resize(args: argparse.Namespace) -> int:
    done = ws.sdk().resize_shell(args.workspace_id, args.shell_id, cols=args.cols, rows=args.rows)
    return _done(args, "workspace-shell-resize", done)


def _close(args: argparse.Namespace) -> int:
    done = ws.sdk().close_shell(args.workspace_id, args.shell_id)
    return _done(args, "workspace-shell-close", done, closed=str(done["closed"]).lower())


def _done(args: argparse.Namespace, tag: str, shell: dict[str, Any], **extra: Any) -> int:
    if args.json:
        emit_json(shell)
    else:
        _summary(tag, shell, **extra)
    return 0
