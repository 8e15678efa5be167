"""Workspace arguments checked, and records turned into the contract's result shapes."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.runtime.network import view_fields

WORKSPACE_PATH = "/workspace"
TTL_RANGE = (60, 3600)
NAME_MAX = 120
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LABEL_VALUE_MAX = 120
# A lifecycle change in progress; see locks.py for how a dead one is recognised.
TRANSITIONAL = ("creating", "starting", "stopping", "resetting", "deleting")


def check_ttl(ttl_seconds: Any) -> int:
    low, high = TTL_RANGE
    if (
        isinstance(ttl_seconds, bool)
        or not isinstance(ttl_seconds, int)
        or not (low <= ttl_seconds <= high)
    ):
        raise InvalidArgumentError(
            f"ttl_seconds must be between {low} and {high}, got {ttl_seconds!r}",
            hint="pass ttl_seconds= (CLI: --ttl-seconds) within that range",
        )
    return ttl_seconds


def check_name(name: Any) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX or "\n" in name:
        raise InvalidArgumentError(
            f"workspace name must be 1-{NAME_MAX} characters on one line, got {name!r:.60}"
        )
    return name


def check_labels(labels: Any) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise InvalidArgumentError("labels must be a mapping of label keys to string values")
    checked = {}
    for key, value in labels.items():
        checked[check_label_key(key)] = _label_value(key, value)
    return checked


def check_label_key(key: Any) -> str:
    if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
        raise InvalidArgumentError(
            f"label key {key!r:.80} is invalid",
            hint="use 1-64 characters: letters, digits, '.', '_' or '-', starting with a "
            "letter or digit",
        )
    return key


def _label_value(key: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > LABEL_VALUE_MAX or "\n" in value:
        raise InvalidArgumentError(
            f"label {key!r} must have a string value of at most {LABEL_VALUE_MAX} characters "
            "on one line"
        )
    return value


def command_view(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "sequence": row["sequence"],
        "command": row["command"],
        "cwd": row["cwd"],
        "exit_code": row["exit_code"],
        "duration_ms": row["duration_ms"],
        "execution_mode": row["execution_mode"],
    }


def workspace_view(
    row: Mapping[str, Any],
    last: Mapping[str, Any] | None,
    services: tuple[int, int] = (0, 0),
    secrets: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The contract's Workspace shape (plus stop_reason); no host paths in it. `services` is
    (service_count, running_service_count), `secrets` its [{name, source_kind}]."""
    return {
        "workspace_id": row["workspace_id"],
        "name": row["name"],
        "labels": json.loads(row["labels"]),
        "environment": row["environment"],
        "environment_version": row["environment_version"],
        "vcpu_count": row["vcpu_count"],
        "mem_mib": row["mem_mib"],
        "ttl_seconds": row["ttl_seconds"],
        "created_at": row["created_at"],
        "last_activity_at": row["last_activity_at"],
        "expires_at": row["expires_at"],
        "state": row["state"],
        "stop_reason": row["stop_reason"],
        "network_policy": row["network_policy"],
        **view_fields(row["network_policy"] != "off"),
        "allow_hosts": json.loads(row["allow_hosts"]),
        "allow_host_compat": False,
        "execution_mode": row["execution_mode"],
        "workspace_path": WORKSPACE_PATH,
        "workspace_seed": json.loads(row["seed"]),
        "secrets": secrets or [],
        "command_count": row["command_count"],
        "last_command": command_view(last),
        "reset_count": row["reset_count"],
        "last_reset_at": row["last_reset_at"],
        "service_count": services[0],
        "running_service_count": services[1],
        "metadata": {},
    }


_LIST_KEYS = (
    "workspace_id", "name", "labels", "environment", "state", "stop_reason", "created_at",
    "last_activity_at", "expires_at", "command_count", "service_count", "running_service_count",
)  # fmt: skip


def list_item(row: Mapping[str, Any], services: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    """The short form `list` shows: a subset of the Workspace shape."""
    view = workspace_view(row, None, services)
    return {key: view[key] for key in _LIST_KEYS}
