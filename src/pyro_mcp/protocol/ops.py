"""Guest protocol, core part: the parameters of exec and configure, checked on both sides.

Stdlib-only and Python 3.11 compatible, like the rest of this package: it runs in the guest too.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pyro_mcp.protocol.redaction import SecretError, check_secret_env_names

DEFAULT_MAX_OUTPUT = 1024 * 1024
MAX_OUTPUT_LIMIT = 16 * 1024 * 1024
MAX_EXEC_TIMEOUT = 7 * 24 * 3600.0

# --- request parameters: one definition of a valid request, checked on both sides ----------

DEFAULT_EXEC_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
MAX_ENTROPY_BYTES = 4096
_EXEC_KEYS = frozenset(
    {"argv", "command", "env", "cwd", "timeout", "max_output", "stream", "secret_env"}
)
_CONFIGURE_KEYS = frozenset({"hostname", "machine_id", "time_ns", "entropy"})
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")
_MACHINE_ID = re.compile(r"[0-9a-f]{32}")


class ParamError(ValueError):
    """A request's parameters are invalid; the agent answers ``invalid_argument``."""


@dataclass(frozen=True)
class ExecSpec:
    """A validated exec request; argv is final (a command became ``sh -lc``)."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    timeout: float
    max_output: int
    stream: bool
    # {SECRET: ENV}: the agent adds each installed secret's value to env under ENV.
    secret_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Identity:
    """Validated configure parameters; None means leave it as it is."""

    hostname: str | None = None
    machine_id: str | None = None
    time_ns: int | None = None
    entropy: bytes | None = None


def check_keys(params: dict[str, Any], allowed: Iterable[str]) -> None:
    """Reject parameters an operation does not know (a typo must not pass silently)."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ParamError(f"unknown parameter(s): {', '.join(unknown)}")


def _plain_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _clean_str(value: object) -> bool:
    return isinstance(value, str) and "\0" not in value


def _exec_env(env: object) -> dict[str, str]:
    if not isinstance(env, dict):
        raise ParamError("env must be an object of strings")
    for key, value in env.items():
        if not (_clean_str(key) and key and "=" not in key):
            raise ParamError(f"invalid environment variable name {key!r:.60}")
        if not _clean_str(value):
            raise ParamError(f"environment variable {key} needs a string value without NUL")
    return {**DEFAULT_EXEC_ENV, **env}


def _exec_argv(argv: object, command: object) -> list[str]:
    if (argv is None) == (command is None):
        raise ParamError("exec needs exactly one of argv and command")
    if command is not None:
        if not _clean_str(command) or not command:
            raise ParamError("command must be a non-empty string without NUL")
        return ["/bin/sh", "-lc", str(command)]
    if not isinstance(argv, list) or not argv or not all(_clean_str(a) for a in argv):
        raise ParamError("argv must be a non-empty list of strings without NUL")
    return list(argv)


def parse_exec(params: dict[str, Any]) -> ExecSpec:
    """Validate exec parameters; raise ParamError naming the one that is wrong."""
    check_keys(params, _EXEC_KEYS)
    argv = _exec_argv(params.get("argv"), params.get("command"))
    cwd = params.get("cwd", "/")
    if not _clean_str(cwd) or not cwd.startswith("/"):
        raise ParamError("cwd must be an absolute path")
    timeout = params.get("timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ParamError("timeout (seconds) is required")
    if not 0 < timeout <= MAX_EXEC_TIMEOUT:  # also rejects NaN
        raise ParamError(f"timeout must be above 0 and at most {MAX_EXEC_TIMEOUT:g} seconds")
    limit = params.get("max_output", DEFAULT_MAX_OUTPUT)
    if not _plain_int(limit) or not 0 <= limit <= MAX_OUTPUT_LIMIT:
        raise ParamError(f"max_output must be an integer within 0..{MAX_OUTPUT_LIMIT}")
    stream = params.get("stream", False)
    if not isinstance(stream, bool):
        raise ParamError("stream must be a boolean")
    env = _exec_env(params.get("env", {}))
    return ExecSpec(argv, env, cwd, float(timeout), limit, stream, parse_secret_env(params))


def parse_secret_env(params: dict[str, Any]) -> dict[str, str]:
    """The optional secret_env of exec, shell.open and service.start: names only."""
    try:
        return check_secret_env_names(params.get("secret_env", {}))
    except SecretError as exc:
        raise ParamError(str(exc)) from None


def parse_configure(params: dict[str, Any]) -> Identity:
    """Validate configure parameters (entropy arrives base64-encoded)."""
    check_keys(params, _CONFIGURE_KEYS)
    hostname, machine_id = params.get("hostname"), params.get("machine_id")
    stamp, entropy = params.get("time_ns"), params.get("entropy")
    if hostname is not None and not (isinstance(hostname, str) and _HOSTNAME.fullmatch(hostname)):
        raise ParamError("hostname must be 1-63 letters, digits, dots or dashes")
    if machine_id is not None and not (
        isinstance(machine_id, str) and _MACHINE_ID.fullmatch(machine_id)
    ):
        raise ParamError("machine_id must be 32 lowercase hex digits")
    if stamp is not None and not (_plain_int(stamp) and stamp > 0):
        raise ParamError("time_ns must be a positive integer (nanoseconds since the epoch)")
    seed = None
    if entropy is not None:
        try:
            seed = base64.b64decode(str(entropy), validate=True)
        except ValueError:  # binascii.Error is a ValueError
            raise ParamError("entropy must be a base64 string") from None
        if not isinstance(entropy, str) or not 0 < len(seed) <= MAX_ENTROPY_BYTES:
            raise ParamError(f"entropy must be base64 of 1..{MAX_ENTROPY_BYTES} bytes")
    return Identity(hostname, machine_id, stamp, seed)
