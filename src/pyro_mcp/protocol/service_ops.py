"""Guest protocol, services part: the parameters of the service operations, checked on both sides.

Shared by the host (which rejects a bad request before sending it), the supervisor (published
ports) and the agent, so it stays stdlib-only and Python 3.11 compatible, like frames.py.

Operations (params -> result; a "record" is the guest's view of one run of a service):

- ``service.start`` {name, argv | command, cwd, env, readiness, ready_timeout,
  ready_interval_ms} -> record, once the service is ready, failed or timed out.
- ``service.list`` {} -> {services: [record]}.
- ``service.status`` {name} -> record.
- ``service.logs`` {name, tail_lines (null: all), max_bytes} -> {service: record,
  stdout_bytes, stderr_bytes, truncated}; the text as ``stdout``/``stderr`` output.
- ``service.stop`` {name, grace_seconds} -> record, once nothing of the service is left.
- ``service.wait`` {name, run_id} -> {ended, service}: answers when that run has ended (at
  once if it has, or if the name now holds another run or nothing).

A record: {name, run_id, state, argv, command, cwd, started_at, ended_at, exit_code, pid,
readiness, ready_at, stop_reason}; exactly one of argv and command is set.

The supervisor's local operations (published ports, never forwarded to the guest):

- ``ports.publish`` {start: service.start params, ports: [{guest_port, host_port}]} ->
  {service: record, published_ports: [{host_port, guest_port}]}: binds the host ports first,
  then starts the service; a taken port starts nothing.
- ``ports.close`` {name, run_id} -> {closed: n}.
- ``ports.list`` {} -> {services: {name: {run_id, published_ports}}}.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from pyro_mcp.protocol import file_ops, ops
from pyro_mcp.protocol.ops import ParamError, check_keys

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_NAME = re.compile(NAME_PATTERN)
RUN_ID = re.compile(r"[0-9a-f]{16}")
STATES = ("running", "exited", "stopped", "failed")
STOP_REASONS = (
    "process_exited_before_ready", "readiness_timeout", "start_cancelled", "sigterm",
    "sigkill", "workspace_stopped", "workspace_reset", "published_port_failed", "guest_lost",
)  # fmt: skip
READINESS_KEYS = {"file": "path", "tcp": "address", "http": "url", "command": "command"}

DEFAULT_READY_TIMEOUT = 30.0
MAX_READY_TIMEOUT = 3600.0
DEFAULT_READY_INTERVAL_MS = 500
MAX_READY_INTERVAL_MS = 60_000
DEFAULT_TAIL_LINES = 200
MAX_TAIL_LINES = 1_000_000
DEFAULT_LOG_BYTES = 256 * 1024  # of each stream, in one logs answer
MAX_LOG_BYTES = 4 * 1024 * 1024
STOP_GRACE = 5.0
MAX_STOP_GRACE = 60.0
MAX_URL_CHARS = 2048
MAX_PUBLISHED_PORTS = 16
MAX_SERVICES = 64  # in one guest, ended ones included (the oldest ended go first)
MIN_HOST_PORT = 1025
ERR_CONFLICT = "conflict"

_START_KEYS = frozenset(
    {
        "name", "argv", "command", "cwd", "env", "readiness", "ready_timeout",
        "ready_interval_ms", "secret_env",
    }
)  # fmt: skip
_LOGS_KEYS = frozenset({"name", "tail_lines", "max_bytes"})


@dataclass(frozen=True)
class Readiness:
    """One readiness check: type and its one value (a file's path relative to /workspace)."""

    type: str
    value: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, READINESS_KEYS[self.type]: self.value}


@dataclass(frozen=True)
class StartSpec:
    """A validated service.start; argv is final (a command became ``sh -lc``)."""

    name: str
    argv: list[str]
    given_argv: list[str] | None
    command: str | None
    cwd: file_ops.Parts
    env: dict[str, str]
    readiness: Readiness | None
    ready_timeout: float
    ready_interval_ms: int
    # {SECRET: ENV}: the agent adds each installed secret's value to env under ENV.
    secret_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LogsSpec:
    name: str
    tail_lines: int | None  # None: all of it
    max_bytes: int


@dataclass(frozen=True)
class PortSpec:
    guest_port: int
    host_port: int | None  # None: any free port


def check_name(value: object) -> str:
    """A service name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ParamError(
            f"service name {value!r:.80} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _number(value: object, what: str, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ParamError(f"{what} must be a number")
    if not 0 < value <= high:
        raise ParamError(f"{what} must be above 0 and at most {high:g}")
    return float(value)


def _int(value: object, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ParamError(f"{what} must be an integer within {low}..{high}")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ParamError(f"{what} must be a non-empty string without NUL")
    return value


def _tcp_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or any(ch.isspace() for ch in host) or not port.isdigit():
        raise ParamError(f"readiness address {value!r:.100} must be HOST:PORT")
    _int(int(port), "the readiness address's port", 1, 65535)
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value) > MAX_URL_CHARS:
        raise ParamError(f"readiness url must be an http:// or https:// URL of at most "
                         f"{MAX_URL_CHARS} characters")  # fmt: skip
    if any(not ch.isprintable() or ch.isspace() for ch in value):
        raise ParamError("readiness url may not hold spaces or control characters")
    return value


def parse_readiness(value: object) -> Readiness | None:
    """{"type": file|tcp|http|command, and that type's one key}; None for no check."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in READINESS_KEYS:
        raise ParamError(
            "readiness must be an object with type file, tcp, http or command "
            '(e.g. {"type": "file", "path": "ready.txt"})'
        )
    kind = str(value["type"])
    key = READINESS_KEYS[kind]
    others = sorted(set(value) - {"type", key})
    if others:
        raise ParamError(
            f"readiness of type {kind} takes only {key!r}, not {', '.join(others)}: "
            "give at most one readiness check"
        )
    text = _text(value.get(key), f"readiness {key}")
    if kind == "file":
        parts = file_ops.workspace_parts(text, "readiness path")
        if not parts:
            raise ParamError("readiness path must name something inside /workspace")
        text = file_ops.logical(parts)
    elif kind == "tcp":
        text = _tcp_address(text)
    elif kind == "http":
        text = _http_url(text)
    return Readiness(kind, text)


def parse_start(params: dict[str, Any]) -> StartSpec:
    """Validate service.start; the command, cwd and env follow exec's rules."""
    check_keys(params, _START_KEYS)
    name = check_name(params.get("name"))
    cwd = file_ops.workspace_parts(params.get("cwd", file_ops.WORKSPACE), "cwd")
    given_argv, command = params.get("argv"), params.get("command")
    if (given_argv is None) == (command is None):
        raise ParamError("a service needs exactly one of argv and command")
    execution = {"argv": given_argv, "command": command, "timeout": 1}
    if "env" in params:
        execution["env"] = params["env"]
    spec = ops.parse_exec({k: v for k, v in execution.items() if v is not None})
    timeout = _number(
        params.get("ready_timeout", DEFAULT_READY_TIMEOUT), "ready_timeout", MAX_READY_TIMEOUT
    )
    interval = _int(
        params.get("ready_interval_ms", DEFAULT_READY_INTERVAL_MS),
        "ready_interval_ms", 1, MAX_READY_INTERVAL_MS,
    )  # fmt: skip
    return StartSpec(
        name=name,
        argv=spec.argv,
        given_argv=list(given_argv) if given_argv is not None else None,
        command=command,
        cwd=cwd,
        env=spec.env,
        readiness=parse_readiness(params.get("readiness")),
        ready_timeout=timeout,
        ready_interval_ms=interval,
        secret_env=ops.parse_secret_env(params),
    )


def parse_name(params: dict[str, Any], *others: str) -> str:
    """The name of service.status/stop/wait (which may take `others` too)."""
    check_keys(params, {"name", *others})
    return check_name(params.get("name"))


def parse_logs(params: dict[str, Any]) -> LogsSpec:
    check_keys(params, _LOGS_KEYS)
    name = check_name(params.get("name"))
    lines = params.get("tail_lines", DEFAULT_TAIL_LINES)
    if lines is not None:
        lines = _int(lines, "tail_lines", 0, MAX_TAIL_LINES)
    limit = _int(params.get("max_bytes", DEFAULT_LOG_BYTES), "max_bytes", 0, MAX_LOG_BYTES)
    return LogsSpec(name, lines, limit)


def parse_grace(params: dict[str, Any]) -> float:
    grace = params.get("grace_seconds", STOP_GRACE)
    if grace == 0:
        return 0.0
    return _number(grace, "grace_seconds", MAX_STOP_GRACE)


def parse_run_id(value: object) -> str:
    if not isinstance(value, str) or not RUN_ID.fullmatch(value):
        raise ParamError("run_id must be 16 lowercase hex digits")
    return value


def parse_ports(value: object) -> list[PortSpec]:
    """Published ports: [{guest_port, host_port (None: any free one)}], host ports distinct."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_PUBLISHED_PORTS:
        raise ParamError(f"published_ports must be a list of at most {MAX_PUBLISHED_PORTS}")
    found: list[PortSpec] = []
    for item in value:
        if not isinstance(item, dict):
            raise ParamError('each published port must be {"guest_port": N, "host_port": M}')
        check_keys(item, {"guest_port", "host_port"})
        guest = _int(item.get("guest_port"), "guest_port", 1, 65535)
        host = item.get("host_port")
        if host is not None:
            host = _int(host, "host_port", MIN_HOST_PORT, 65535)
            if any(spec.host_port == host for spec in found):
                raise ParamError(f"host_port {host} is published twice")
        found.append(PortSpec(guest, host))
    return found
