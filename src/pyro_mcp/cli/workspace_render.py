"""Human output of `pyro workspace …`: summary blocks, `[tag] key=value` lines, logs, patches."""

from __future__ import annotations

import shlex
import sys
from datetime import UTC, datetime
from typing import Any, TextIO


def iso_time(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    stamp = datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


def command_text(command: str | list[str] | None) -> str:
    if command is None:
        return "-"
    return command if isinstance(command, str) else shlex.join(command)


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    # Quoted so that a path or name with spaces still splits into one key=value field.
    return shlex.quote(str(value)) if isinstance(value, str) and value else str(value)


def tag_line(tag: str, stream: TextIO | None = None, **fields: Any) -> None:
    """`[tag] key=value …` on stdout (or `stream`)."""
    pairs = " ".join(f"{key}={_value(value)}" for key, value in fields.items())
    out = stream or sys.stdout
    out.write(f"[{tag}] {pairs}\n")
    out.flush()


def labels_text(labels: dict[str, str] | None) -> str:
    if not labels:
        return "-"
    return ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _seed_text(seed: dict[str, Any] | None) -> str:
    if not seed or seed.get("mode") == "empty":
        return "empty"
    return (
        f"{seed['mode']} {seed['seed_path']} -> {seed['destination']} "
        f"({seed['entry_count']} entries, {seed['bytes_written']} bytes)"
    )


def _state_text(ws: dict[str, Any]) -> str:
    reason = ws.get("stop_reason")
    return f"{ws['state']} ({reason})" if ws["state"] == "stopped" and reason else ws["state"]


def _resources_text(ws: dict[str, Any]) -> str:
    vcpus = ws["vcpu_count"]
    return f"{vcpus} vCPU{'' if vcpus == 1 else 's'} / {ws['mem_mib']} MiB"


def _last_command_text(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    return (
        f"#{last['sequence']} exit_code={_value(last['exit_code'])} "
        f"duration_ms={last['duration_ms']} cwd={last['cwd']} $ {command_text(last['command'])}"
    )


def summary(ws: dict[str, Any], title: str = "Workspace ID") -> None:
    """The block `create`, `status`, `update`, `stop`, `start` and `reset` print."""
    secrets = ", ".join(f"{s['name']} ({s['source_kind']})" for s in ws.get("secrets") or [])
    lines = [
        f"{title}: {ws['workspace_id']}",
        f"Name: {ws.get('name') or '-'}",
        f"Labels: {labels_text(ws.get('labels'))}",
        f"Environment: {ws['environment']} {ws.get('environment_version') or ''}".rstrip(),
        f"State: {_state_text(ws)}",
        f"Workspace: {ws['workspace_path']}",
        f"Network policy: {_network_text(ws)}",
        f"Workspace seed: {_seed_text(ws.get('workspace_seed'))}",
        f"Secrets: {secrets or '-'}",
        f"Execution mode: {ws['execution_mode']}",
        f"Resources: {_resources_text(ws)}",
        f"Expires at: {iso_time(ws['expires_at'])} (epoch {ws['expires_at']:.0f})",
        f"Command count: {ws['command_count']}",
        f"Reset count: {ws['reset_count']}",
        f"Services: {ws['running_service_count']}/{ws['service_count']} running",
        f"Last command: {_last_command_text(ws.get('last_command'))}",
    ]
    print("\n".join(lines))


def _network_text(ws: dict[str, Any]) -> str:
    if not ws.get("network_enabled"):
        return str(ws["network_policy"])
    allowed = ", ".join(ws.get("allow_hosts") or []) or "any public address"
    return f"{ws['network_policy']} (guest {ws['guest_ip']}; allowed: {allowed})"


def stop_summary(ws: dict[str, Any]) -> None:
    summary(ws, "Stopped workspace ID")
    stop = ws.get("workspace_stop") or {}
    if stop.get("memory_kept"):
        print("Memory: kept (start resumes every process where it was)")
    elif stop.get("note"):
        print(f"Memory: not kept: {stop['note']}")


def start_summary(ws: dict[str, Any]) -> None:
    summary(ws, "Started workspace ID")
    start = ws.get("workspace_start") or {}
    if start.get("resumed"):
        print("Start: resumed where it stopped")
    elif start.get("note"):
        print(f"Start: booted fresh from the disk: {start['note']}")


def reset_summary(ws: dict[str, Any]) -> None:
    summary(ws)
    reset = ws["workspace_reset"]
    print(f"Reset source: {reset['snapshot_name']} ({reset['kind']})")
    print(
        f"Reset restore: {reset['entry_count']} entries, {reset['bytes_written']} bytes "
        f"-> {reset['destination']}"
    )


def workspace_list(payload: dict[str, Any]) -> None:
    if not payload["workspaces"]:
        print("No workspaces.")
        return
    for ws in payload["workspaces"]:
        tag_line(
            "workspace",
            workspace_id=ws["workspace_id"],
            name=ws.get("name"),
            state=ws["state"],
            environment=ws["environment"],
            labels=",".join(f"{k}={v}" for k, v in sorted((ws.get("labels") or {}).items()))
            or None,
            last_activity_at=iso_time(ws["last_activity_at"]),
            expires_at=iso_time(ws["expires_at"]),
            commands=ws["command_count"],
            services=f"{ws['running_service_count']}/{ws['service_count']}",
        )


def _passthrough(text: str, out: TextIO) -> None:
    if text:
        out.write(text if text.endswith("\n") else text + "\n")


def logs(payload: dict[str, Any]) -> None:
    """Each command with its output: guest stdout to stdout, guest stderr to stderr."""
    if not payload["entries"]:
        print(f"No commands recorded in workspace {payload['workspace_id']}.")
        return
    for entry in payload["entries"]:
        exit_code = "unknown" if entry["exit_code"] is None else entry["exit_code"]
        print(
            f"#{entry['sequence']} exit_code={exit_code} duration_ms={entry['duration_ms']} "
            f"cwd={entry['cwd']} recorded_at={iso_time(entry['recorded_at'])}"
        )
        print(f"$ {command_text(entry['command'])}")
        # Flushed in turn so a terminal shows each command's stderr next to its stdout.
        _passthrough(entry["stdout"], sys.stdout)
        sys.stdout.flush()
        _passthrough(entry["stderr"], sys.stderr)
        sys.stderr.flush()


def exec_trailer(result: dict[str, Any]) -> None:
    extra: dict[str, Any] = {}
    if result.get("timed_out"):
        extra["timed_out"] = True
    if result.get("stdout_truncated") or result.get("stderr_truncated"):
        extra["output_truncated"] = True
    tag_line(
        "workspace-exec",
        sys.stderr,
        workspace_id=result["workspace_id"],
        sequence=result["sequence"],
        cwd=result["cwd"],
        execution_mode=result["execution_mode"],
        exit_code=result["exit_code"],
        duration_ms=result["duration_ms"],
        **extra,
    )


def sync_line(result: dict[str, Any]) -> None:
    sync = result["workspace_sync"]
    tag_line(
        "workspace-sync",
        workspace_id=result["workspace_id"],
        mode=sync["mode"],
        source=sync["source_path"],
        destination=sync["destination"],
        entry_count=sync["entry_count"],
        bytes_written=sync["bytes_written"],
        execution_mode=result["execution_mode"],
    )


def export_line(result: dict[str, Any]) -> None:
    keys = ("workspace_path", "output_path", "artifact_type", "entry_count", "bytes_written")
    tag_line(
        "workspace-export",
        workspace_id=result["workspace_id"],
        **{key: result[key] for key in keys},
        execution_mode=result["execution_mode"],
    )


def diff(payload: dict[str, Any]) -> None:
    if not payload["changed"]:
        print("No workspace changes.")
        return
    tag_line("workspace-diff", workspace_id=payload["workspace_id"], **payload["summary"])
    _passthrough(payload["patch"], sys.stdout)
    for entry in payload["entries"]:
        if entry.get("text_patch") is None:
            print(f"{entry['status']}: {entry['path']} ({entry['artifact_type']}, no text patch)")
    if payload.get("patch_truncated"):
        sys.stderr.write("[workspace-diff] patch truncated; `workspace export` gets whole files\n")


def file_list(payload: dict[str, Any]) -> None:
    tag_line(
        "workspace-file-list",
        workspace_id=payload["workspace_id"],
        path=payload["path"],
        recursive=payload["recursive"],
        entries=len(payload["entries"]),
        truncated=payload["truncated"],
    )
    for entry in payload["entries"]:
        target = f" -> {entry['link_target']}" if entry.get("link_target") else ""
        print(f"{entry['path']} [{entry['artifact_type']}] size={entry['size_bytes']}{target}")


def file_content(content: str) -> None:
    """The content exactly: bytes, so no locale encoding or newline translation gets in."""
    sys.stdout.flush()
    sys.stdout.buffer.write(content.encode("utf-8", errors="surrogateescape"))
    sys.stdout.flush()


def file_read_trailer(result: dict[str, Any], tag: str = "workspace-file-read") -> None:
    tag_line(
        tag,
        sys.stderr,
        workspace_id=result["workspace_id"],
        path=result["path"],
        size_bytes=result["size_bytes"],
        truncated=result["truncated"],
    )


def file_write_line(result: dict[str, Any]) -> None:
    tag_line(
        "workspace-file-write",
        workspace_id=result["workspace_id"],
        path=result["path"],
        size_bytes=result["size_bytes"],
        bytes_written=result["bytes_written"],
        execution_mode=result["execution_mode"],
    )


def patch_summary(payload: dict[str, Any]) -> None:
    tag_line(
        "workspace-patch",
        workspace_id=payload["workspace_id"],
        changed=payload["changed"],
        **payload["summary"],
        execution_mode=payload["execution_mode"],
    )
    for entry in payload["entries"]:
        print(f"{entry['status']}: {entry['path']}")
