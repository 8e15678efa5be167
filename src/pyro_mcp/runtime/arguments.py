"""The bounds on a VM's resources and times, and the two forms of a command (VMs and workspaces)."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from typing import Any

from pyro_mcp.errors import InvalidArgumentError

LIMITS = {
    "vcpu_count": (1, 8),
    "mem_mib": (256, 32768),
    "ttl_seconds": (60, 86400),
    "timeout_seconds": (1, 86400),
}
OutputCallback = Callable[[str, bytes], None]
Command = str | Sequence[str]


def check_range(name: str, value: Any) -> int:
    low, high = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidArgumentError(
            f"{name} must be between {low} and {high}, got {value!r}",
            hint=f"pass {name}= within that range",
        )
    return int(value)


def command_parts(command: Command) -> tuple[list[str] | None, str | None, str]:
    """(argv, shell string, display text): a string runs through `sh -lc`, a list as is."""
    if isinstance(command, str):
        if not command.strip():
            raise InvalidArgumentError("command is empty", hint="pass the command to run")
        return None, command, command
    argv = list(command)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidArgumentError("command must be a non-empty string or list of strings")
    return argv, None, shlex.join(argv)
