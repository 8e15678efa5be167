"""A VM record as the contract shows it: the VM, how it booted, and a command's result."""

from __future__ import annotations

from typing import Any

from pyro_mcp.agent_client.client import ExecResult
from pyro_mcp.runtime.arguments import Command, command_parts
from pyro_mcp.runtime.network import view_fields


def vm_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "vm_id": row["vm_id"],
        "environment": row["environment"],
        "environment_version": row["environment_version"],
        "vcpu_count": row["vcpu_count"],
        "mem_mib": row["mem_mib"],
        "ttl_seconds": row["ttl_seconds"],
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "state": row["state"],
        **view_fields(bool(row["network_enabled"])),
        "allow_host_compat": False,
        "execution_mode": row["execution_mode"],
        "stop_reason": row["stop_reason"],
        "metadata": vm_metadata(row),
    }


def vm_metadata(row: dict[str, Any]) -> dict[str, str]:
    """How a VM runs: its backend, and whether it restored, came from standby or cold-booted
    (and why); a VM, or the workspace it serves, reports this as `metadata`."""
    return {
        "backend": row["backend"] or "pending",
        "boot_mode": row["boot_mode"] or "pending",
        "boot_note": row["boot_note"] or "",
    }


def exec_fields(result: ExecResult, wall_ms: int) -> dict[str, Any]:
    """What every exec result says about the command's run, one-shot VM or workspace."""
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "duration_ms": wall_ms,
        "guest_duration_ms": result.duration_ms,
    }


def exec_view(
    row: dict[str, Any], command: Command, result: ExecResult, wall_ms: int, cleanup: dict[str, Any]
) -> dict[str, Any]:
    return {
        "vm_id": row["vm_id"],
        "environment": row["environment"],
        "environment_version": row["environment_version"],
        "command": command_parts(command)[2],
        **exec_fields(result, wall_ms),
        "execution_mode": row["execution_mode"],
        "cleanup": cleanup,
    }
