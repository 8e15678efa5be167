"""`pyro workspace service …`: long-running processes with readiness checks and published
ports. Summaries go to stderr; stdout carries the list, the logs, or `--json`'s JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pyro_mcp.cli import workspace as ws
from pyro_mcp.cli.output import emit_json
from pyro_mcp.cli.run import as_command
from pyro_mcp.errors import InvalidArgumentError


def register(sub: Any) -> None:
    service = ws.group(sub, "service", "long-running services", parser_class=ws.Intermixed)
    start = ws.on_workspace(
        service,
        "start",
        "start one: pyro workspace service start ID NAME -- CMD",
        _start,
        "service_name",
    )
    start.add_argument("--cwd", default="/workspace", help="inside /workspace (default)")
    ready = start.add_mutually_exclusive_group()
    ready.add_argument("--ready-file", metavar="PATH", help="ready once this file exists")
    ready.add_argument("--ready-tcp", metavar="HOST:PORT", help="ready once it accepts")
    ready.add_argument("--ready-http", metavar="URL", help="ready once it answers 2xx/3xx")
    ready.add_argument("--ready-command", metavar="CMD", help="ready once it exits 0")
    start.add_argument("--ready-timeout-seconds", type=int, default=30, help="default 30")
    start.add_argument("--ready-interval-ms", type=int, default=500, help="default 500")
    start.add_argument(
        "--publish", action="append", metavar="[HOST_PORT:]GUEST_PORT",
        help="relay 127.0.0.1:HOST_PORT to the guest while it runs; repeatable",
    )  # fmt: skip
    ws.add_secret_env(start)
    start.set_defaults(wants_command=True)
    ws.on_workspace(service, "list", "list a workspace's services", _list)
    ws.on_workspace(service, "status", "show a service", _status, "service_name")
    logs = ws.on_workspace(
        service, "logs", "print a service's stdout and stderr", _logs, "service_name"
    )
    logs.add_argument("--tail-lines", type=int, default=200, help="the last N lines (200)")
    logs.add_argument("--all", action="store_true", help="everything kept")
    ws.on_workspace(
        service, "stop", "TERM, then KILL, the service's processes", _stop, "service_name"
    )


def _ports_text(service: dict[str, Any]) -> str:
    ports = service.get("published_ports") or []
    return ",".join(
        f"{p['host']}:{p['host_port']}->{p['guest_port']}/{p['protocol']}" for p in ports
    )


def _summary(tag: str, service: dict[str, Any]) -> None:
    fields = {
        "workspace_id": service["workspace_id"], "service": service["service_name"],
        "state": service["state"], "cwd": service["cwd"],
        "execution_mode": service["execution_mode"],
    }  # fmt: skip
    for key in ("pid", "exit_code", "stop_reason"):
        if service.get(key) is not None:
            fields[key] = service[key]
    if service.get("published_ports"):
        fields["published_ports"] = _ports_text(service)
    sys.stderr.write(f"[{tag}] " + " ".join(f"{k}={v}" for k, v in fields.items()) + "\n")


def _start(args: argparse.Namespace) -> int:
    if not args.command:
        raise InvalidArgumentError(
            "no command given", hint="put it after `--`: pyro workspace service start ID web -- CMD"
        )
    from pyro_mcp.runtime.workspaces.services import parse_publish, readiness_from_options

    readiness = readiness_from_options(
        ready_file=args.ready_file, ready_tcp=args.ready_tcp, ready_http=args.ready_http,
        ready_command=args.ready_command,
    )  # fmt: skip
    service = ws.sdk().start_service(
        args.workspace_id, args.service_name, command=as_command(args.command), cwd=args.cwd,
        readiness=readiness, ready_timeout_seconds=args.ready_timeout_seconds,
        ready_interval_ms=args.ready_interval_ms, secret_env=ws.secret_env(args),
        published_ports=[parse_publish(p) for p in args.publish] if args.publish else None,
    )  # fmt: skip
    _done(args, "workspace-service-start", service)
    return 1 if service["state"] == "failed" else 0


def _list(args: argparse.Namespace) -> int:
    found = ws.sdk().list_services(args.workspace_id)
    if args.json:
        emit_json(found)
        return 0
    for service in found["services"]:
        published = _ports_text(service) or "-"
        print(f"{service['service_name']} [{service['state']}] cwd={service['cwd']} "
              f"published={published}")  # fmt: skip
    if not found["services"]:
        print("No services.")
    return 0


def _status(args: argparse.Namespace) -> int:
    _done(
        args,
        "workspace-service-status",
        ws.sdk().status_service(args.workspace_id, args.service_name),
    )
    return 0


def _logs(args: argparse.Namespace) -> int:
    logs = ws.sdk().logs_service(
        args.workspace_id, args.service_name, tail_lines=args.tail_lines, all=args.all
    )
    if args.json:
        emit_json(logs)
        return 0
    sys.stdout.write(logs["stdout"])
    sys.stdout.flush()
    sys.stderr.write(logs["stderr"])
    _summary("workspace-service-logs", logs)
    return 0


def _stop(args: argparse.Namespace) -> int:
    _done(
        args, "workspace-service-stop", ws.sdk().stop_service(args.workspace_id, args.service_name)
    )
    return 0


def _done(args: argparse.Namespace, tag: str, service: dict[str, Any]) -> None:
    if args.json:
        emit_json(service)
    else:
        _summary(tag, service)
