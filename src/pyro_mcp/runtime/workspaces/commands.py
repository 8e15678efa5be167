"""Commands in a workspace: exec with a persistent sequence number, and the logs of them all.

Each command's output goes to `commands/NNNNNN.stdout|stderr` in the workspace directory; the
record (sequence, exit code, duration) goes to the state store before the command starts, so a
command whose caller died still shows up in the logs (with no exit code).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pyro_mcp.runtime import launch
from pyro_mcp.runtime.arguments import Command, OutputCallback, check_range, command_parts
from pyro_mcp.runtime.vm_views import exec_fields
from pyro_mcp.runtime.workspaces import records
from pyro_mcp.runtime.workspaces.service import WorkspaceService
from pyro_mcp.state import workspaces as rows

COMMANDS_DIR = "commands"
LOG_TAIL_BYTES = 64 * 1024  # of each stream, per entry in logs


class WorkspaceCommands:
    def __init__(self, service: WorkspaceService) -> None:
        self.service = service
        self.store = service.store

    def exec(
        self,
        workspace_id: str,
        *,
        command: Command,
        timeout_seconds: int = 30,
        secret_env: dict[str, str] | None = None,
        on_output: OutputCallback | None = None,
    ) -> dict[str, Any]:
        """Run `command` in /workspace; the result carries its sequence number."""
        timeout = check_range("timeout_seconds", timeout_seconds)
        argv, shell, text = command_parts(command)
        mapped = self.service.secret_env(workspace_id, secret_env)
        # The text is recorded and returned redacted; the guest runs it as given.
        redactor = self.service.redactor(workspace_id)
        text = redactor.redact_text(text)
        with self.service.using(workspace_id, "exec") as (row, vm_dir):
            started = time.time()
            sequence = rows.begin_command(
                self.store, workspace_id, text, records.WORKSPACE_PATH, started
            )
            try:
                with launch.connect(vm_dir) as client:
                    result = client.exec(
                        argv, shell, cwd=records.WORKSPACE_PATH, timeout=timeout,
                        on_output=on_output, secret_env=mapped,
                    )  # fmt: skip
            except BaseException as exc:
                rows.finish_command(
                    self.store, workspace_id, sequence, recorded_at=time.time(),
                    error=redactor.redact_text(str(exc))[:2000] or type(exc).__name__,
                )  # fmt: skip
                raise
            wall_ms = round((time.time() - started) * 1000)
            self._save_output(workspace_id, sequence, result.stdout, result.stderr)
            rows.finish_command(
                self.store,
                workspace_id,
                sequence,
                recorded_at=time.time(),
                exit_code=result.exit_code,
                duration_ms=wall_ms,
                timed_out=int(result.timed_out),
                stdout_truncated=int(result.stdout_truncated),
                stderr_truncated=int(result.stderr_truncated),
                execution_mode=row["execution_mode"],
            )
        return {
            "workspace_id": workspace_id,
            "environment": row["environment"],
            "environment_version": row["environment_version"],
            "command": text,
            **exec_fields(result, wall_ms),
            "execution_mode": row["execution_mode"],
            "sequence": sequence,
            "cwd": records.WORKSPACE_PATH,
        }

    def _output_file(self, workspace_id: str, sequence: int, stream: str) -> Path:
        directory = self.service.directory(workspace_id) / COMMANDS_DIR
        return directory / f"{sequence:06d}.{stream}"

    def _save_output(self, workspace_id: str, sequence: int, stdout: str, stderr: str) -> None:
        (self.service.directory(workspace_id) / COMMANDS_DIR).mkdir(mode=0o700, exist_ok=True)
        for stream, text in (("stdout", stdout), ("stderr", stderr)):
            path = self._output_file(workspace_id, sequence, stream)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
                handle.write(text)

    def logs(self, workspace_id: str) -> dict[str, Any]:
        """Every command run in the workspace, oldest first, with the tail of its output."""
        self.service.row(workspace_id)
        entries = [self._entry(workspace_id, cmd) for cmd in rows.list_commands(
            self.store, workspace_id
        )]  # fmt: skip
        return {"workspace_id": workspace_id, "count": len(entries), "entries": entries}

    def _entry(self, workspace_id: str, cmd: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {
            key: cmd[key]
            for key in ("sequence", "command", "cwd", "exit_code", "duration_ms", "error")
        }
        entry["execution_mode"] = cmd["execution_mode"] or "unknown"
        entry["recorded_at"] = cmd["recorded_at"]
        entry["started_at"] = cmd["started_at"]
        entry["timed_out"] = bool(cmd["timed_out"])
        for stream in ("stdout", "stderr"):
            path = self._output_file(workspace_id, cmd["sequence"], stream)
            text, cut = _tail(path)
            entry[f"{stream}_file"] = str(path) if path.exists() else None
            entry[stream] = text
            # Cut at exec time (the guest's output cap) or here (the logs' tail).
            entry[f"{stream}_truncated"] = cut or bool(cmd[f"{stream}_truncated"])
        return entry


def _tail(path: Path) -> tuple[str, bool]:
    """The last LOG_TAIL_BYTES of a log file and whether anything came before them."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(size - LOG_TAIL_BYTES, 0))
            data = handle.read()
    except FileNotFoundError:
        return "", False
    return data.decode("utf-8", "replace"), size > LOG_TAIL_BYTES
