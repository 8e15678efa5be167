"""Canned SDK results and the fake `Pyro` the workspace CLI tests run against."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

WID = "ws-0123abcd"
EXPIRES = 1767225600.0  # 2026-01-01T00:00:00Z

WORKSPACE: dict[str, Any] = {
    "workspace_id": WID,
    "name": "demo",
    "labels": {"team": "core", "env": "dev"},
    "environment": "debian:12",
    "environment_version": "1.0.0",
    "vcpu_count": 1,
    "mem_mib": 1024,
    "ttl_seconds": 600,
    "created_at": EXPIRES - 600,
    "last_activity_at": EXPIRES - 60,
    "expires_at": EXPIRES,
    "state": "started",
    "stop_reason": None,
    "network_policy": "off",
    "network_enabled": False,
    "allow_host_compat": False,
    "guest_ip": None,
    "tap_name": None,
    "execution_mode": "guest_vsock",
    "workspace_path": "/workspace",
    "workspace_seed": {
        "mode": "directory",
        "seed_path": "/src/app",
        "destination": "/workspace",
        "entry_count": 3,
        "bytes_written": 2048,
    },
    "secrets": [],
    "command_count": 2,
    "last_command": {
        "sequence": 2,
        "command": ["make", "test"],
        "cwd": "/workspace",
        "exit_code": 0,
        "duration_ms": 120,
        "execution_mode": "guest_vsock",
    },
    "reset_count": 0,
    "last_reset_at": None,
    "service_count": 0,
    "running_service_count": 0,
    "metadata": {},
}

EXEC_RESULT: dict[str, Any] = {
    "workspace_id": WID,
    "environment": "debian:12",
    "environment_version": "1.0.0",
    "command": ["echo", "hi"],
    "stdout": "hi\n",
    "stderr": "warn\n",
    "stdout_truncated": False,
    "stderr_truncated": False,
    "exit_code": 0,
    "timed_out": False,
    "duration_ms": 15,
    "execution_mode": "guest_vsock",
    "sequence": 3,
    "cwd": "/workspace",
}

LIST_KEYS = [
    *("workspace_id", "name", "labels", "environment", "state", "created_at"),
    *("last_activity_at", "expires_at", "command_count", "service_count", "running_service_count"),
]


def log_entry(
    sequence: int, command: str | list[str], exit_code: int | None, stdout: str, stderr: str
) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "command": command,
        "cwd": "/workspace",
        "exit_code": exit_code,
        "duration_ms": 9,
        "execution_mode": "guest_vsock",
        "stdout_file": f"/state/{sequence}.out",
        "stderr_file": f"/state/{sequence}.err",
        "recorded_at": EXPIRES - 100 + 50 * (sequence - 1),
        "stdout": stdout,
        "stderr": stderr,
    }


SNAPSHOT = {
    "workspace_id": WID, "snapshot_name": "s1", "kind": "named", "created_at": 1.0,
    "entry_count": 12, "bytes_written": 4096, "deletable": True,
}  # fmt: skip

RESULTS: dict[str, Any] = {
    "create_workspace": WORKSPACE,
    "update_workspace": WORKSPACE,
    "status_workspace": WORKSPACE,
    "start_workspace": WORKSPACE,
    "stop_workspace": {**WORKSPACE, "state": "stopped", "stop_reason": "user_request"},
    "create_snapshot": {"workspace_id": WID, "snapshot": SNAPSHOT, "execution_mode": "qemu-tcg"},
    "list_snapshots": {
        "workspace_id": WID,
        "count": 2,
        "snapshots": [
            {**SNAPSHOT, "snapshot_name": "baseline", "kind": "baseline", "deletable": False},
            SNAPSHOT,
        ],
    },
    "delete_snapshot": {"workspace_id": WID, "snapshot_name": "s1", "deleted": True},
    "export_workspace_disk": {
        "workspace_id": WID,
        "output_path": "/tmp/root.ext4",
        "disk_format": "ext4",
        "bytes_written": 8192,
    },
    "list_workspaces": {"count": 1, "workspaces": [{k: WORKSPACE[k] for k in LIST_KEYS}]},
    "delete_workspace": {"workspace_id": WID, "deleted": True, "reason": "explicit_delete"},
    "exec_workspace": EXEC_RESULT,
    "logs_workspace": {
        "workspace_id": WID,
        "count": 2,
        "entries": [
            log_entry(1, "echo out; echo err >&2", 0, "out\n", "err\n"),
            log_entry(2, ["sleep", "100"], None, "", ""),
        ],
    },
    "push_workspace_sync": {
        "workspace_id": WID,
        "execution_mode": "guest_vsock",
        "workspace_sync": {
            "mode": "directory",
            "source_path": "/src/app",
            "destination": "/workspace/app",
            "entry_count": 4,
            "bytes_written": 4096,
        },
    },
    "export_workspace": {
        "workspace_id": WID,
        "workspace_path": "/workspace/out",
        "output_path": "/tmp/out",
        "artifact_type": "directory",
        "entry_count": 2,
        "bytes_written": 10,
        "execution_mode": "guest_vsock",
    },
    "diff_workspace": {
        "workspace_id": WID,
        "changed": True,
        "summary": {
            "total": 2,
            "added": 1,
            "modified": 0,
            "deleted": 0,
            "type_changed": 0,
            "text_patched": 1,
            "non_text": 1,
        },
        "entries": [
            {"path": "a.txt", "status": "added", "artifact_type": "file", "text_patch": "+x\n"},
            {"path": "b.bin", "status": "added", "artifact_type": "file", "text_patch": None},
        ],
        "patch": "--- /dev/null\n+++ b/a.txt\n@@ -0,0 +1 @@\n+x\n",
        "patch_truncated": False,
    },
    "list_workspace_files": {
        "workspace_id": WID,
        "path": "/workspace",
        "recursive": False,
        "entries": [
            {
                "path": "/workspace/a.txt",
                "artifact_type": "file",
                "size_bytes": 2,
                "link_target": None,
            },
            {
                "path": "/workspace/link",
                "artifact_type": "symlink",
                "size_bytes": 5,
                "link_target": "a.txt",
            },
        ],
        "truncated": False,
        "execution_mode": "guest_vsock",
    },
    "read_workspace_file": {
        "workspace_id": WID,
        "path": "/workspace/a.txt",
        "size_bytes": 9,
        "max_bytes": 65536,
        "content": "x\r\ny é",
        "truncated": False,
        "execution_mode": "guest_vsock",
    },
    "write_workspace_file": {
        "workspace_id": WID,
        "path": "/workspace/a.txt",
        "size_bytes": 5,
        "bytes_written": 5,
        "execution_mode": "guest_vsock",
    },
    "apply_workspace_patch": {
        "workspace_id": WID,
        "changed": True,
        "summary": {"total": 1, "added": 0, "modified": 1, "deleted": 0},
        "entries": [{"path": "/workspace/a.txt", "status": "modified"}],
        "patch": "…",
        "execution_mode": "guest_vsock",
    },
    "reset_workspace": {
        **WORKSPACE,
        "reset_count": 1,
        "workspace_reset": {
            "snapshot_name": "baseline",
            "kind": "baseline",
            "destination": "/workspace",
            "entry_count": 3,
            "bytes_written": 2048,
        },
    },
}


# The disk tools answer as the file tools do.
RESULTS["list_workspace_disk"] = RESULTS["list_workspace_files"]
RESULTS["read_workspace_disk"] = RESULTS["read_workspace_file"]


class FakeSdk:
    """Stands in for `Pyro()`: records each call and answers with the canned result."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.results = copy.deepcopy(RESULTS)
        self.errors: dict[str, Exception] = {}
        self.phase_callbacks: list[Callable[[str], None] | None] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in RESULTS:
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> Any:
            if "on_phase" in kwargs:  # boots report progress; checked on its own below
                self.phase_callbacks.append(kwargs.pop("on_phase"))
            self.calls.append((name, args, kwargs))
            if name in self.errors:
                raise self.errors[name]
            result = self.results[name]
            on_output = kwargs.get("on_output")
            if on_output is not None:
                on_output("stdout", result["stdout"].encode())
                on_output("stderr", result["stderr"].encode())
            return result

        return method

    @property
    def call(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        assert len(self.calls) == 1, self.calls
        return self.calls[0]
