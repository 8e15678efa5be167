"""`pyro workspace …`: persistent workspaces (lifecycle, exec, sync, export, diff, files, reset).

Each handler calls exactly one SDK method; `workspace_render` holds the human output.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyro_mcp.cli import workspace_render as render
from pyro_mcp.cli.output import emit_json, show, stream_chunk
from pyro_mcp.cli.run import as_command
from pyro_mcp.errors import InvalidArgumentError

if TYPE_CHECKING:
    from pyro_mcp.sdk import Pyro

NETWORK_POLICIES = ("off", "egress", "egress+published-ports")
ALLOW_HOST_HELP = "only this domain (*.example.com too) or IPv4 CIDR is reachable; repeatable"
Handler = Callable[[argparse.Namespace], int]


class Intermixed(argparse.ArgumentParser):
    """Parses options and positionals in any order, also with an optional positional.

    Older CPython releases (gh-59317; 3.12.1 among them) reject `file list WID --recursive
    PATH`: the optional PATH is consumed empty together with WID and the real one is left over.
    """

    _inner = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inner:  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def sdk() -> Pyro:
    from pyro_mcp.sdk import Pyro  # imported late: `pyro --help` should not pay for the SDK

    return Pyro()


# --- parser -------------------------------------------------------------------------------


def leaf(
    sub: Any, name: str, help_text: str, handler: Handler, *, json_flag: bool = True
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=handler)
    return parser


def on_workspace(
    sub: Any, name: str, help_text: str, handler: Handler, *more: str
) -> argparse.ArgumentParser:
    """A leaf taking WORKSPACE_ID and then each positional of `more` (e.g. "shell_id")."""
    parser = leaf(sub, name, help_text, handler)
    for dest in ("workspace_id", *more):
        parser.add_argument(dest, metavar=dest.upper())
    return parser


def group(sub: Any, name: str, help_text: str, **kwargs: Any) -> Any:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(
        dest=f"workspace_{name}_command", metavar="SUBCOMMAND", required=True, **kwargs
    )


def register(commands: Any) -> None:
    workspace = commands.add_parser(
        "workspace",
        help="persistent workspaces: create, exec, files, diff, reset",
        description="Persistent microVM workspaces that keep /workspace between commands.",
    )
    sub = workspace.add_subparsers(dest="workspace_command", metavar="SUBCOMMAND", required=True)
    _register_lifecycle(sub)
    _register_exec_and_transfer(sub)
    _register_files(sub)
    # modules of their own
    from pyro_mcp.cli import workspace_disk, workspace_service, workspace_shell, workspace_snapshot

    workspace_shell.register(sub)
    workspace_service.register(sub)
    workspace_snapshot.register(sub)
    workspace_disk.register(sub)


def _register_create(sub: Any) -> None:
    create = leaf(sub, "create", "create and boot a workspace", _create, json_flag=False)
    create.add_argument("environment", metavar="ENVIRONMENT")
    create.add_argument("--vcpu-count", type=int, default=1, help="virtual CPUs")
    create.add_argument("--mem-mib", type=int, default=1024, help="guest memory in MiB")
    create.add_argument("--ttl-seconds", type=int, default=600, help="lifetime limit in seconds")
    create.add_argument(
        "--network-policy",
        choices=NETWORK_POLICIES,
        default="off",
        help="off: no network device; egress: public addresses only (default: off)",
    )
    create.add_argument("--allow-host", action="append", metavar="NAME|CIDR", help=ALLOW_HOST_HELP)
    create.add_argument(
        "--allow-host-compat", action="store_true", help="accepted for compatibility"
    )
    create.add_argument("--seed-path", help="host directory or .tar/.tar.gz copied to /workspace")
    create.add_argument("--name", help="free-text name")
    create.add_argument("--label", action="append", metavar="KEY=VALUE", help="repeatable")
    create.add_argument(
        "--secret", action="append", metavar="NAME=VALUE",
        help="a secret kept for the guest only; repeatable. The value shows in this command's "
        "/proc/PID/cmdline while it runs: prefer --secret-file",
    )  # fmt: skip
    create.add_argument(
        "--secret-file", action="append", metavar="NAME=PATH",
        help="a secret read from a host file (at most 64 KiB of UTF-8); repeatable",
    )  # fmt: skip
    output = create.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the result as JSON")
    output.add_argument("--id-only", action="store_true", help="print only the workspace ID")


def _register_lifecycle(sub: Any) -> None:
    _register_create(sub)
    leaf(sub, "list", "list workspaces, most recently active first", _list)
    update = on_workspace(sub, "update", "rename, relabel, or change the allowlist", _update)
    names = update.add_mutually_exclusive_group()
    names.add_argument("--name", help="new name")
    names.add_argument("--clear-name", action="store_true", help="remove the name")
    update.add_argument("--label", action="append", metavar="KEY=VALUE", help="set; repeatable")
    update.add_argument("--clear-label", action="append", metavar="KEY", help="remove; repeatable")
    hosts = update.add_mutually_exclusive_group()
    hosts.add_argument(
        "--allow-host",
        action="append",
        metavar="NAME|CIDR",
        help="replaces the allowlist; " + ALLOW_HOST_HELP,
    )
    hosts.add_argument(
        "--clear-allow-hosts", action="store_true", help="lift the allowlist: plain egress"
    )
    on_workspace(sub, "status", "show a workspace", _status)
    on_workspace(sub, "logs", "show every command run in a workspace, with output", _logs)
    on_workspace(sub, "delete", "delete a workspace and everything in it", _delete)
    on_workspace(sub, "stop", "stop a workspace's VM; its disk is kept", _stop)
    on_workspace(sub, "start", "boot a stopped workspace again", _start)
    reset = on_workspace(sub, "reset", "reboot from a fresh disk, restore a snapshot", _reset)
    reset.add_argument("--snapshot", default="baseline", help="snapshot to restore")


def _register_exec_and_transfer(sub: Any) -> None:
    run = on_workspace(sub, "exec", "run a command: pyro workspace exec ID -- CMD [ARGS...]", _exec)
    run.add_argument("--timeout-seconds", type=int, default=30, help="command timeout")
    add_secret_env(run)
    run.set_defaults(wants_command=True)

    sync = group(sub, "sync", "copy host files into a workspace")
    push = on_workspace(sync, "push", "copy a host directory or archive in", _sync_push)
    push.add_argument("source_path", metavar="SOURCE_PATH")
    push.add_argument("--dest", default="/workspace", help="destination inside /workspace")

    export = on_workspace(sub, "export", "copy a workspace path out to the host", _export)
    export.add_argument("path", metavar="PATH")
    export.add_argument("--output", required=True, help="host path to create (must not exist)")

    on_workspace(sub, "diff", "show changes against the baseline", _diff)

    patch = group(sub, "patch", "change workspace files with a unified diff")
    apply = on_workspace(patch, "apply", "apply a unified diff under /workspace", _patch_apply)
    source = apply.add_mutually_exclusive_group(required=True)
    source.add_argument("--patch", help="the patch text")
    source.add_argument("--patch-file", help="host file holding the patch (UTF-8)")


def _register_files(sub: Any) -> None:
    files = group(sub, "file", "list, read and write workspace files", parser_class=Intermixed)
    add_readers(files, "file")
    write = on_workspace(files, "write", "write a text file", _file_write)
    write.add_argument("path", metavar="PATH")
    text = write.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the file content")
    text.add_argument("--text-file", help="host file holding the content (UTF-8)")


# --- argument helpers ---------------------------------------------------------------------


def add_secret_env(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secret-env", action="append", metavar="SECRET[=ENV]",
        help="put the workspace secret SECRET in the environment as ENV (default: SECRET); "
        "repeatable",
    )  # fmt: skip


def secret_env(args: argparse.Namespace) -> dict[str, str] | None:
    """The --secret-env flags as the SDK's secret_env mapping."""
    if not args.secret_env:
        return None
    from pyro_mcp.runtime.workspaces.secrets import parse_secret_env_flags

    return parse_secret_env_flags(args.secret_env)


def _secrets(args: argparse.Namespace) -> list[dict[str, str]] | None:
    """--secret NAME=VALUE and --secret-file NAME=PATH as the SDK's secrets list."""
    found: list[dict[str, str]] = []
    for flag, key, items in (
        ("--secret", "value", args.secret), ("--secret-file", "file_path", args.secret_file)
    ):  # fmt: skip
        for item in items or []:
            name, sep, rest = item.partition("=")
            if not sep or not name:
                # Never echo a --secret argument: a mistyped one may be the value itself.
                got = "an argument without NAME=" if flag == "--secret" else repr(item)
                raise InvalidArgumentError(f"{flag} expects NAME={key.upper()}, got {got}")
            found.append({"name": name, key: rest})
    return found or None


def _labels(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"--label expects KEY=VALUE, got {item!r}")
        labels[key] = value
    return labels


def _read_text(flag: str, path: str) -> str:
    try:
        # newline="": CRLF and lone CR reach the guest as they are in the file.
        with open(path, encoding="utf-8", newline="") as handle:
            return handle.read()
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {flag} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{flag} {path} is not UTF-8 text: {exc.reason}") from exc


# --- handlers -----------------------------------------------------------------------------


def _phases(args: argparse.Namespace) -> Callable[[str], None] | None:
    """Progress of a boot on stderr, for people: none with --json or --id-only."""
    if args.json or getattr(args, "id_only", False):
        return None

    def phase(message: str) -> None:
        sys.stderr.write(f"[workspace] phase={message}\n")
        sys.stderr.flush()

    return phase


def _create(args: argparse.Namespace) -> int:
    labels = _labels(args.label)
    workspace = sdk().create_workspace(
        environment=args.environment,
        vcpu_count=args.vcpu_count,
        mem_mib=args.mem_mib,
        ttl_seconds=args.ttl_seconds,
        network_policy=args.network_policy,
        allow_host_compat=args.allow_host_compat,
        seed_path=args.seed_path,
        name=args.name,
        labels=labels,
        secrets=_secrets(args),
        allow_hosts=args.allow_host,
        on_phase=_phases(args),
    )
    if args.id_only:
        print(workspace["workspace_id"])
    else:
        show(workspace, args.json, render.summary)
    return 0


def _list(args: argparse.Namespace) -> int:
    show(sdk().list_workspaces(), args.json, render.workspace_list)
    return 0


def _update(args: argparse.Namespace) -> int:
    labels = _labels(args.label)
    workspace = sdk().update_workspace(
        args.workspace_id,
        name=args.name,
        clear_name=args.clear_name,
        labels=labels,
        clear_labels=args.clear_label,
        allow_hosts=args.allow_host,
        clear_allow_hosts=args.clear_allow_hosts,
    )
    show(workspace, args.json, render.summary)
    return 0


def _status(args: argparse.Namespace) -> int:
    show(sdk().status_workspace(args.workspace_id), args.json, render.summary)
    return 0


def _logs(args: argparse.Namespace) -> int:
    show(sdk().logs_workspace(args.workspace_id), args.json, render.logs)
    return 0


def _delete(args: argparse.Namespace) -> int:
    result = sdk().delete_workspace(args.workspace_id)
    show(result, args.json, lambda r: print(f"Deleted workspace: {r['workspace_id']}"))
    return 0


def _stop(args: argparse.Namespace) -> int:
    workspace = sdk().stop_workspace(args.workspace_id)
    show(workspace, args.json, render.stop_summary)
    return 0


def _start(args: argparse.Namespace) -> int:
    workspace = sdk().start_workspace(args.workspace_id, on_phase=_phases(args))
    show(workspace, args.json, render.start_summary)
    return 0


def _reset(args: argparse.Namespace) -> int:
    workspace = sdk().reset_workspace(
        args.workspace_id, snapshot=args.snapshot, on_phase=_phases(args)
    )
    show(workspace, args.json, render.reset_summary)
    return 0


def _exec(args: argparse.Namespace) -> int:
    if not args.command:
        raise InvalidArgumentError(
            "no command given",
            hint=f"put the command after `--`: pyro workspace exec {args.workspace_id} -- true",
        )
    result = sdk().exec_workspace(
        args.workspace_id,
        command=as_command(args.command),
        timeout_seconds=args.timeout_seconds,
        secret_env=secret_env(args),
        on_output=None if args.json else stream_chunk,
    )
    if args.json:
        emit_json(result)
    else:
        render.exec_trailer(result)
    return int(result["exit_code"]) & 0xFF


def _sync_push(args: argparse.Namespace) -> int:
    result = sdk().push_workspace_sync(args.workspace_id, args.source_path, dest=args.dest)
    show(result, args.json, render.sync_line)
    return 0


def _export(args: argparse.Namespace) -> int:
    result = sdk().export_workspace(args.workspace_id, args.path, output_path=args.output)
    show(result, args.json, render.export_line)
    return 0


def _diff(args: argparse.Namespace) -> int:
    show(sdk().diff_workspace(args.workspace_id), args.json, render.diff)
    return 0


def _patch_apply(args: argparse.Namespace) -> int:
    patch = args.patch if args.patch is not None else _read_text("--patch-file", args.patch_file)
    result = sdk().apply_workspace_patch(args.workspace_id, patch=patch)
    show(result, args.json, render.patch_summary)
    return 0


def add_readers(files: Any, kind: str) -> None:
    """`list` and `read` under `files`: of a started workspace's files (kind "file") or of
    a stopped one's disk ("disk")."""
    listing = on_workspace(files, "list", "list files under a path", _file_list)
    listing.add_argument(
        "path", metavar="PATH", nargs="?", default="/workspace", help="default: /workspace"
    )
    listing.add_argument("--recursive", action="store_true", help="descend into directories")
    read = leaf(files, "read", "print a file", _file_read, json_flag=False)
    read.add_argument("workspace_id", metavar="WORKSPACE_ID")
    read.add_argument("path", metavar="PATH")
    read.add_argument("--max-bytes", type=int, default=65536, help="read at most this much")
    output = read.add_mutually_exclusive_group()
    output.add_argument("--content-only", action="store_true", help="no trailer on stderr")
    output.add_argument("--json", action="store_true", help="print the result as JSON")
    for parser in (listing, read):
        parser.set_defaults(reader_kind=kind)


_READERS = {
    "file": ("list_workspace_files", "read_workspace_file"),
    "disk": ("list_workspace_disk", "read_workspace_disk"),
}


def _file_list(args: argparse.Namespace) -> int:
    method = getattr(sdk(), _READERS[args.reader_kind][0])
    result = method(args.workspace_id, path=args.path, recursive=args.recursive)
    show(result, args.json, render.file_list)
    return 0


def _file_read(args: argparse.Namespace) -> int:
    method = getattr(sdk(), _READERS[args.reader_kind][1])
    result = method(args.workspace_id, args.path, max_bytes=args.max_bytes)
    if args.json:
        emit_json(result)
        return 0
    render.file_content(result["content"])
    if not args.content_only:
        render.file_read_trailer(result, f"workspace-{args.reader_kind}-read")
    return 0


def _file_write(args: argparse.Namespace) -> int:
    text = args.text if args.text is not None else _read_text("--text-file", args.text_file)
    result = sdk().write_workspace_file(args.workspace_id, args.path, text=text)
    show(result, args.json, render.file_write_line)
    return 0
