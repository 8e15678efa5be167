"""Host side of the service operations (the agent's service.*, the supervisor's ports.*).

Parameters go through the protocol's own rules (protocol.service_ops) before they are sent;
every answer is checked for type and range, because the guest is hostile. A request's timeout
follows from what it waits for: a start waits as long as its readiness timeout, plus a margin
for the last try, the kill of a service that failed and the answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyro_mcp.agent_client.base import count, field, malformed
from pyro_mcp.errors import ConflictError, GuestError, InvalidArgumentError
from pyro_mcp.protocol import file_ops, frames, ops
from pyro_mcp.protocol import service_ops as sp

if TYPE_CHECKING:
    from pyro_mcp.agent_client.client import GuestClient

# Beyond the readiness timeout: a try that started just before it (10 s at most, a command
# check), the kill of the service and its session (10 s at most), and the answer.
START_MARGIN = 30.0
CALL_TIMEOUT = 30.0
STOP_TIMEOUT = sp.STOP_GRACE + 30.0
WAIT_FOREVER = 7 * 24 * 3600.0
_MAX_TEXT = 64 * 1024


@dataclass(frozen=True)
class ServiceRecord:
    """The guest's view of one run of a service (see protocol/service_ops.py)."""

    name: str
    run_id: str
    state: str
    argv: tuple[str, ...] | None
    command: str | None
    cwd: str
    started_at: float
    ended_at: float | None
    exit_code: int | None
    pid: int | None
    readiness: dict[str, str] | None
    ready_at: float | None
    stop_reason: str | None

    @property
    def command_text(self) -> str:
        """The command as a shell would read it (an argv joined with quoting)."""
        return self.command if self.command is not None else shlex.join(self.argv or ())


@dataclass(frozen=True)
class ServiceLogs:
    service: ServiceRecord
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool


@dataclass(frozen=True)
class PublishedPort:
    host_port: int
    guest_port: int


def record_json(record: ServiceRecord) -> dict[str, Any]:
    """A record as the guest sends it (the supervisor passes records on)."""
    data = dataclasses.asdict(record)
    data["argv"] = list(record.argv) if record.argv is not None else None
    return data


def start_timeout(ready_timeout: float) -> float:
    """How long the host waits for a start that waits `ready_timeout` s for readiness."""
    return ready_timeout + START_MARGIN


# --- the agent's operations -------------------------------------------------------------------


def start_service(client: GuestClient, params: dict[str, Any]) -> ServiceRecord:
    """Start a service and wait for its readiness (see service.start); a running name is a
    ConflictError."""
    spec = _validate(sp.parse_start, params)
    with guest_conflicts():
        result = client.request("service.start", params, timeout=start_timeout(spec.ready_timeout))
    return parse_record(result)


def list_services(client: GuestClient) -> list[ServiceRecord]:
    result = client.request("service.list", {}, timeout=CALL_TIMEOUT)
    items = field(result, "services", list)
    if len(items) > sp.MAX_SERVICES:
        raise malformed("service list (too many services)")
    return [parse_record(item) for item in items]


def service_status(client: GuestClient, name: str) -> ServiceRecord:
    params = {"name": name}
    _validate(sp.parse_name, params)
    return parse_record(client.request("service.status", params, timeout=CALL_TIMEOUT))


def service_logs(
    client: GuestClient, name: str, *, tail_lines: int | None, max_bytes: int = sp.DEFAULT_LOG_BYTES
) -> ServiceLogs:
    """The last `tail_lines` lines (None: all kept) of each stream, at most max_bytes each."""
    params = {"name": name, "tail_lines": tail_lines, "max_bytes": max_bytes}
    _validate(sp.parse_logs, params)
    received = {stream: bytearray() for stream in frames.STREAMS}

    def take(stream: str, data: bytes) -> None:
        if stream not in received or len(received[stream]) + len(data) > max_bytes:
            raise malformed(f"service.logs output (on {stream}, or over {max_bytes} bytes)")
        received[stream] += data

    result = client.request("service.logs", params, timeout=CALL_TIMEOUT, on_output=take)
    for stream in frames.STREAMS:
        if count(result, f"{stream}_bytes", max_bytes) != len(received[stream]):
            raise malformed(f"service.logs result ({stream}_bytes disagrees with the output)")
    return ServiceLogs(
        service=parse_record(field(result, "service", dict)),
        stdout=received["stdout"].decode("utf-8", "replace"),
        stderr=received["stderr"].decode("utf-8", "replace"),
        stdout_truncated=field(result, "stdout_truncated", bool),
        stderr_truncated=field(result, "stderr_truncated", bool),
    )


def stop_service(client: GuestClient, name: str, *, grace: float = sp.STOP_GRACE) -> ServiceRecord:
    """SIGTERM, SIGKILL after `grace` s; answers once nothing of the service is left."""
    params = {"name": name, "grace_seconds": grace}
    _validate(lambda p: sp.parse_name(p, "grace_seconds"), params)
    result = client.request("service.stop", params, timeout=grace + STOP_TIMEOUT)
    return parse_record(result)


def wait_service(client: GuestClient, name: str, run_id: str) -> ServiceRecord | None:
    """Block until run `run_id` of service `name` has ended; what the name holds then."""
    params = {"name": name, "run_id": run_id}
    result = client.request("service.wait", params, timeout=WAIT_FOREVER)
    if field(result, "ended", bool) is not True:
        raise malformed("service.wait result (answered before the end)")
    service = result.get("service")
    return None if service is None else parse_record(service)


# --- the supervisor's operations (published ports) ----------------------------------------------


def publish(
    client: GuestClient, start: dict[str, Any], ports: list[dict[str, Any]]
) -> tuple[ServiceRecord, list[PublishedPort]]:
    """Bind the host ports, then start the service (ports.publish); a taken port or a running
    name is a ConflictError, and then nothing was started."""
    spec = _validate(sp.parse_start, start)
    _validate(sp.parse_ports, ports)
    params = {"start": start, "ports": ports}
    with guest_conflicts():
        result = client.request(
            "ports.publish", params, timeout=start_timeout(spec.ready_timeout) + CALL_TIMEOUT
        )
    return parse_record(field(result, "service", dict)), _ports(result.get("published_ports"))


def published(client: GuestClient) -> dict[str, tuple[str, list[PublishedPort]]]:
    """Every service whose ports are open: name -> (run_id, ports)."""
    result = client.request("ports.list", {}, timeout=CALL_TIMEOUT)
    found: dict[str, tuple[str, list[PublishedPort]]] = {}
    for name, item in field(result, "services", dict).items():
        if not isinstance(item, dict):
            raise malformed("ports.list result")
        found[_check(sp.check_name, name)] = (
            _check(sp.parse_run_id, item.get("run_id")),
            _ports(item.get("published_ports")),
        )
    return found


def adopt_ports(
    client: GuestClient, name: str, run_id: str, ports: list[dict[str, Any]]
) -> list[PublishedPort]:
    """Relay `ports` ({guest_port, host_port}) again to run `run_id`, which still runs (its
    VM was resumed); a taken host port is a ConflictError."""
    params = {"name": name, "run_id": run_id, "ports": ports}
    with guest_conflicts():
        result = client.request("ports.adopt", params, timeout=CALL_TIMEOUT)
    return _ports(result.get("published_ports"))


def close_ports(client: GuestClient, name: str, run_id: str) -> int:
    result = client.request("ports.close", {"name": name, "run_id": run_id}, timeout=CALL_TIMEOUT)
    return count(result, "closed", sp.MAX_PUBLISHED_PORTS)


# --- checking what comes back ------------------------------------------------------------------


@contextlib.contextmanager
def guest_conflicts() -> Iterator[None]:
    """A `conflict` answer (a running name, a taken port) as the ConflictError it is."""
    try:
        yield
    except GuestError as exc:
        if exc.details.get("guest_code") != sp.ERR_CONFLICT:
            raise
        raise ConflictError(exc.message.partition(" failed: ")[2] or exc.message) from None


def _validate(parse: Any, params: Any) -> Any:
    try:
        return parse(params)
    except ops.ParamError as exc:
        raise InvalidArgumentError(str(exc)) from None


def _check(parse: Any, value: Any) -> Any:
    try:
        return parse(value)
    except ops.ParamError:
        raise malformed("service record") from None


def _ports(value: object) -> list[PublishedPort]:
    if not isinstance(value, list) or len(value) > sp.MAX_PUBLISHED_PORTS:
        raise malformed("published ports")
    found = []
    for item in value:
        if not isinstance(item, dict):
            raise malformed("published port")
        host, guest = count(item, "host_port", 65535), count(item, "guest_port", 65535)
        found.append(PublishedPort(host, guest))
    return found


def _time(value: object, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise malformed("service record (a time is not a number)")
    return float(value)


def _command(record: dict[str, Any]) -> tuple[tuple[str, ...] | None, str | None]:
    argv, command = record.get("argv"), record.get("command")
    if (argv is None) == (command is None):
        raise malformed("service record (needs exactly one of argv and command)")
    if command is not None and (not isinstance(command, str) or len(command) > _MAX_TEXT):
        raise malformed("service record (command)")
    if argv is not None and not (
        isinstance(argv, list) and all(isinstance(a, str) for a in argv) and argv
    ):
        raise malformed("service record (argv)")
    return (tuple(argv) if argv is not None else None), command


def parse_record(record: object) -> ServiceRecord:
    """A guest's service record, checked field by field."""
    if not isinstance(record, dict):
        raise malformed("service record")
    state, reason = record.get("state"), record.get("stop_reason")
    code, pid = record.get("exit_code"), record.get("pid")
    if state not in sp.STATES or (reason is not None and reason not in sp.STOP_REASONS):
        raise malformed("service record (state or stop_reason)")
    if code is not None and count(record, "exit_code", 255) != code:
        raise malformed("service record (exit_code)")
    if pid is not None and count(record, "pid", 2**22) == 0:
        raise malformed("service record (pid)")
    cwd = field(record, "cwd", str)
    _check(lambda v: file_ops.workspace_parts(v, "cwd"), cwd)
    readiness = _check(sp.parse_readiness, record.get("readiness"))
    argv, command = _command(record)
    return ServiceRecord(
        name=_check(sp.check_name, record.get("name")),
        run_id=_check(sp.parse_run_id, record.get("run_id")),
        state=str(state),
        argv=argv,
        command=command,
        cwd=cwd,
        started_at=float(_time(record.get("started_at"), optional=False) or 0.0),
        ended_at=_time(record.get("ended_at")),
        exit_code=code,
        pid=pid,
        readiness=readiness.to_json() if readiness is not None else None,
        ready_at=_time(record.get("ready_at")),
        stop_reason=reason,
    )
