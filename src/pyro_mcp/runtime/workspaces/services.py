"""Services in a workspace: start (with a readiness check and published ports), list, status,
logs and stop, in the contract's shapes; and the host's record of them, which outlives the VM.

While the workspace runs its guest is the source of truth: every call copies what the guest
reports, and which ports the supervisor relays, into the state store. A stopped workspace
answers from those records; its lifecycle (service.py) marks running ones stopped with
`workspace_stopped` or `workspace_reset` when their processes end with the VM, so no service is
ever forgotten. A stop that keeps the guest's memory ends none: they wait, paused, and start
resumes them with their published ports (suspend.py).

A start waits in the guest for as long as its readiness timeout asks; the host's wait is
derived from it (agent_client.services.start_timeout), never a fixed one. Published ports are
bound by the VM's supervisor on 127.0.0.1 before the service starts, so a taken host port
starts nothing; they close when the service stops or exits, or the VM ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from pyro_mcp.agent_client import services as agent_services
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.agent_client.services import PublishedPort, ServiceRecord
from pyro_mcp.errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    WrongStateError,
)
from pyro_mcp.protocol import ops
from pyro_mcp.protocol import service_ops as sp
from pyro_mcp.runtime import launch
from pyro_mcp.runtime.arguments import Command, command_parts
from pyro_mcp.runtime.workspaces import records, suspend
from pyro_mcp.runtime.workspaces import secrets as ws_secrets
from pyro_mcp.runtime.workspaces.service import WorkspaceService
from pyro_mcp.state import services as rows
from pyro_mcp.state.schema import SERVICE_COLUMNS

T = TypeVar("T")
Then = Callable[[Mapping[str, Any], GuestClient], T | None]
PUBLISH_POLICY = "egress+published-ports"
HOST = "127.0.0.1"
_OPTIONS = {"ready_file": "file", "ready_tcp": "tcp", "ready_http": "http",
            "ready_command": "command"}  # fmt: skip


class WorkspaceServices:
    """The service operations of the SDK, on the workspaces of `service`."""

    def __init__(self, service: WorkspaceService) -> None:
        self.service = service
        self.store = service.store

    def start(
        self,
        workspace_id: str,
        service_name: str,
        *,
        command: Command,
        cwd: str = records.WORKSPACE_PATH,
        readiness: Mapping[str, Any] | None = None,
        ready_timeout_seconds: float = sp.DEFAULT_READY_TIMEOUT,
        ready_interval_ms: int = sp.DEFAULT_READY_INTERVAL_MS,
        secret_env: Mapping[str, str] | None = None,
        published_ports: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Start `command` as service `service_name`; returns once it is ready (running), or
        failed (exited first, or not ready within ready_timeout_seconds: then killed)."""
        params = start_params(
            service_name, command, cwd, readiness, ready_timeout_seconds, ready_interval_ms
        )
        ports = check_ports(published_ports)
        mapped = self.service.secret_env(workspace_id, secret_env)
        if mapped:
            params["secret_env"] = mapped
        with self.service.using(workspace_id, "service start") as (row, vm_dir):
            if ports:
                _check_policy(row)
            with launch.connect(vm_dir) as client, _conflicts(workspace_id, service_name):
                if ports:
                    record, published = agent_services.publish(client, params, ports)
                else:
                    record, published = agent_services.start_service(client, params), []
            stored = self._row(row, record, published)
            rows.put(self.store, stored)
        return _view(stored)

    def list(self, workspace_id: str) -> dict[str, Any]:
        """Every service the workspace has run (its last run per name), oldest first."""
        self._synced(workspace_id, "service list")
        views = [_view(r) for r in rows.list_for(self.store, workspace_id)]
        running = sum(view["state"] == "running" for view in views)
        return {
            "workspace_id": workspace_id,
            "count": len(views),
            "running_count": running,
            "services": views,
        }

    def status(self, workspace_id: str, service_name: str) -> dict[str, Any]:
        name = _name(service_name)
        self._synced(workspace_id, "service status")
        return _view(self._stored(workspace_id, name))

    def logs(
        self, workspace_id: str, service_name: str, *, tail_lines: int = 200, all: bool = False
    ) -> dict[str, Any]:
        """The last tail_lines lines of stdout and stderr (or all that is kept), each capped at
        sp.DEFAULT_LOG_BYTES. A service of an earlier VM of the workspace has no logs left
        (they lived in that guest's memory): empty, and truncated."""
        name, lines = _name(service_name), _tail_lines(tail_lines, all)
        found = self._synced(workspace_id, "service logs", lambda _, c: _logs(c, name, lines))
        stored = self._stored(workspace_id, name)
        if found is None or found.service.run_id != stored["run_id"]:
            text = {"stdout": "", "stderr": "", "truncated": True}
        else:
            cut = found.stdout_truncated or found.stderr_truncated
            text = {"stdout": found.stdout, "stderr": found.stderr, "truncated": cut}
        return {**_view(stored), **text, "tail_lines": lines}

    def stop(self, workspace_id: str, service_name: str) -> dict[str, Any]:
        """SIGTERM to the service's process group, SIGKILL 5 s later; returns once nothing of
        it runs and its published ports are closed. An ended service is returned as it is."""
        name = _name(service_name)
        self._synced(workspace_id, "service stop", lambda row, c: self._stop(row, c, name))
        return _view(self._stored(workspace_id, name))

    # --- machinery -----------------------------------------------------------------------

    def _synced(self, workspace_id: str, op: str, then: Then[T] | None = None) -> T | None:
        """Bring the records up to date with the guest (if the workspace runs), then run
        `then(row, client)` on the same connection; its result, or None if not running."""
        if self.service.row(workspace_id)["state"] != "started":
            self._end_all(workspace_id)
            return None
        try:
            with self.service.using(workspace_id, op) as (row, vm_dir), launch.connect(vm_dir) as c:
                self._sync(row, c)
                return then(row, c) if then is not None else None
        except WrongStateError:
            if self.service.row(workspace_id)["state"] == "started":
                raise
            self._end_all(workspace_id)  # stopped meanwhile: the records answer
            return None

    def _end_all(self, workspace_id: str) -> None:
        """No VM, so nothing runs: a record still running missed its VM's end (the lifecycle
        marks them; a call that died between the two steps did not). Services of a workspace
        stopped with its memory kept are only paused: start resumes them."""
        if suspend.held(self.service.directory(workspace_id)):
            return
        rows.end_running(self.store, workspace_id, "workspace_stopped", time.time())

    def _sync(self, row: Mapping[str, Any], client: GuestClient) -> None:
        found = agent_services.list_services(client)
        relayed = agent_services.published(client) if _publishes(row) else {}
        copies = [self._row(row, record, _ports_of(record, relayed)) for record in found]
        rows.sync(self.store, row["workspace_id"], row["vm_id"], copies, at=time.time())

    def _stop(self, row: Mapping[str, Any], client: GuestClient, name: str) -> None:
        try:
            record = agent_services.stop_service(client, name)
        except NotFoundError:
            return  # not in this guest: the record (of an earlier VM) says how it ended
        if _publishes(row):
            agent_services.close_ports(client, name, record.run_id)
        rows.put(self.store, self._row(row, record, []))

    def _row(
        self, workspace: Mapping[str, Any], record: ServiceRecord, ports: Sequence[PublishedPort]
    ) -> dict[str, Any]:
        """The state-store row of `record`, its command text redacted before it is stored."""
        redactor = self.service.redactor(workspace["workspace_id"])
        return ws_secrets.redact_tree(_row(workspace, record, ports), redactor)

    def _stored(self, workspace_id: str, name: str) -> dict[str, Any]:
        stored = rows.get(self.store, workspace_id, name)
        if stored is None:
            raise NotFoundError(
                f"service {name!r} does not exist in workspace {workspace_id}",
                hint=f"list the workspace's services with `pyro workspace service list "
                f"{workspace_id}`",
            )
        return stored


def _logs(client: GuestClient, name: str, lines: int | None) -> agent_services.ServiceLogs | None:
    try:
        return agent_services.service_logs(client, name, tail_lines=lines)
    except NotFoundError:
        return None


# --- arguments ------------------------------------------------------------------------------


def _checked(parse: Any, value: Any, hint: str | None = None) -> Any:
    try:
        return parse(value)
    except ops.ParamError as exc:
        raise InvalidArgumentError(str(exc), hint=hint) from None


def _name(service_name: Any) -> str:
    hint = "name services like 'web' or 'db-1'"
    return str(_checked(sp.check_name, service_name, hint))


def _tail_lines(tail_lines: Any, everything: bool) -> int | None:
    if everything:
        return None
    _checked(sp.parse_logs, {"name": "x", "tail_lines": tail_lines})
    return int(tail_lines)


def start_params(
    service_name: str,
    command: Command,
    cwd: str,
    readiness: Mapping[str, Any] | None,
    ready_timeout_seconds: float,
    ready_interval_ms: int,
) -> dict[str, Any]:
    """The service.start parameters, checked by the guest's own rules before anything runs."""
    argv, shell, _ = command_parts(command)
    if readiness is not None and not isinstance(readiness, Mapping):
        raise InvalidArgumentError(
            'readiness must be a dict such as {"type": "file", "path": "ready.txt"}'
        )
    params: dict[str, Any] = {
        "name": _name(service_name),
        "cwd": cwd,
        "readiness": dict(readiness) if readiness is not None else None,
        "ready_timeout": ready_timeout_seconds,
        "ready_interval_ms": ready_interval_ms,
    }
    params |= {"argv": argv} if argv is not None else {"command": shell}
    _checked(sp.parse_start, params, "see the readiness and cwd rules of start_service")
    return params


def check_ports(published_ports: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """[{guest_port, host_port (None: any free one)}], checked."""
    if published_ports is None:
        return []
    ports = [dict(item) if isinstance(item, Mapping) else item for item in published_ports]
    specs = _checked(sp.parse_ports, ports, 'e.g. [{"guest_port": 8000, "host_port": None}]')
    return [{"guest_port": s.guest_port, "host_port": s.host_port} for s in specs]


def parse_publish(text: str) -> dict[str, Any]:
    """The CLI's `--publish [HOST_PORT:]GUEST_PORT` as a published_ports item."""
    host, sep, guest = str(text).rpartition(":")
    if not guest.isdigit() or (sep and not host.isdigit()):
        raise InvalidArgumentError(
            f"--publish {text!r} is not [HOST_PORT:]GUEST_PORT",
            hint="e.g. --publish 8080:80 (host port 8080) or --publish 80 (any free host port)",
        )
    item = {"guest_port": int(guest), "host_port": int(host) if sep else None}
    return check_ports([item])[0]


def readiness_from_options(
    *,
    ready_file: str | None = None,
    ready_tcp: str | None = None,
    ready_http: str | None = None,
    ready_command: str | None = None,
) -> dict[str, str] | None:
    """The CLI's and MCP's --ready-* options as one readiness dict; more than one is refused."""
    given = {
        option: value
        for option, value in {"ready_file": ready_file, "ready_tcp": ready_tcp,
                              "ready_http": ready_http, "ready_command": ready_command}.items()
        if value is not None
    }  # fmt: skip
    if len(given) > 1:
        raise InvalidArgumentError(
            f"give at most one readiness check, not {' and '.join(sorted(given))}",
            hint="a service has one readiness check: a file, a TCP port, an HTTP URL or a command",
        )
    if not given:
        return None
    ((option, value),) = given.items()
    kind = _OPTIONS[option]
    readiness = {"type": kind, sp.READINESS_KEYS[kind]: value}
    _checked(sp.parse_readiness, readiness)
    return readiness


def _check_policy(row: Mapping[str, Any]) -> None:
    if not _publishes(row):
        raise InvalidArgumentError(
            f"published ports require workspace network_policy '{PUBLISH_POLICY}' "
            f"(workspace {row['workspace_id']} has '{row['network_policy']}')",
            hint=f"create the workspace with network_policy='{PUBLISH_POLICY}' "
            f"(CLI: --network-policy {PUBLISH_POLICY})",
        )


def _publishes(row: Mapping[str, Any]) -> bool:
    return bool(row["network_policy"] == PUBLISH_POLICY)


@contextlib.contextmanager
def _conflicts(workspace_id: str, name: str) -> Iterator[None]:
    """A running name or a taken host port, said in the workspace's terms."""
    try:
        yield
    except ConflictError as exc:
        if "already running" in exc.message:
            raise ConflictError(
                f"service {name!r} is already running in workspace {workspace_id}",
                hint="stop it first, or start this one under another name",
            ) from None
        raise ConflictError(exc.message, hint="nothing was started") from None


# --- records and views ------------------------------------------------------------------------


def _ports_of(
    record: ServiceRecord, relayed: dict[str, tuple[str, list[PublishedPort]]]
) -> list[PublishedPort]:
    run_id, ports = relayed.get(record.name, ("", []))
    return ports if record.state == "running" and run_id == record.run_id else []


def _row(
    workspace: Mapping[str, Any], record: ServiceRecord, ports: Sequence[PublishedPort]
) -> dict[str, Any]:
    """The state-store row of `record`, a run in the workspace's current VM."""
    row = {
        "workspace_id": workspace["workspace_id"],
        "service_name": record.name,
        "run_id": record.run_id,
        "vm_id": workspace["vm_id"],
        "state": record.state,
        "command": record.command_text,
        "cwd": record.cwd,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "exit_code": record.exit_code,
        "pid": record.pid,
        "readiness": json.dumps(record.readiness) if record.readiness else None,
        "ready_at": record.ready_at,
        "stop_reason": record.stop_reason,
        "published_ports": json.dumps([dataclasses.asdict(port) for port in ports]),
        "execution_mode": workspace["execution_mode"],
        "recorded_at": time.time(),
    }
    assert set(row) == set(SERVICE_COLUMNS)
    return row


def _view(row: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's Service shape; published_ports are those open now."""
    ports = [
        {
            "host": HOST,
            "host_port": p["host_port"],
            "guest_port": p["guest_port"],
            "protocol": "tcp",
        }
        for p in json.loads(row["published_ports"] or "[]")
    ]
    return {
        "workspace_id": row["workspace_id"],
        "service_name": row["service_name"],
        "state": row["state"],
        "command": row["command"],
        "cwd": row["cwd"],
        "started_at": row["started_at"],
        "ended_at": row["ended_at"],
        "exit_code": row["exit_code"],
        "pid": row["pid"],
        "execution_mode": row["execution_mode"],
        "readiness": json.loads(row["readiness"]) if row["readiness"] else None,
        "ready_at": row["ready_at"],
        "stop_reason": row["stop_reason"],
        "published_ports": ports,
    }
