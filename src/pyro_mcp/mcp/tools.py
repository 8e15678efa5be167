"""The MCP tools: each one is an SDK method, described for the model that will choose it.

A tool's parameters are its SDK method's, read from the method's signature, less the ones
that only make sense in-process (callbacks); the smaller profiles also leave out the network
and secret knobs, as 3.11 did. The MCP SDK
derives the input schema from that signature and runs the call in a worker thread, so a long
boot never stalls the server. Host paths (secret files too) go through the allowed roots
first; results (redacted by the SDK) are
bounded; a PyroError becomes a tool error carrying the same message the CLI prints.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from pyro_mcp.errors import PyroError
from pyro_mcp.mcp.bounds import bound
from pyro_mcp.mcp.descriptions import DESCRIPTIONS
from pyro_mcp.mcp.roots import Roots
from pyro_mcp.sdk import Pyro

Tool = Callable[..., dict[str, Any]]

SDK_METHODS = {
    "vm_run": "run_in_vm",
    "vm_list_environments": "list_environments",
    "vm_create": "create_vm",
    "vm_start": "start_vm",
    "vm_exec": "exec_vm",
    "vm_stop": "stop_vm",
    "vm_delete": "delete_vm",
    "vm_status": "status_vm",
    "vm_network_info": "network_info_vm",
    "vm_reap_expired": "reap_expired",
    "workspace_create": "create_workspace",
    "workspace_list": "list_workspaces",
    "workspace_update": "update_workspace",
    "workspace_status": "status_workspace",
    "workspace_logs": "logs_workspace",
    "workspace_diff": "diff_workspace",
    "workspace_delete": "delete_workspace",
    "workspace_stop": "stop_workspace",
    "workspace_start": "start_workspace",
    "workspace_exec": "exec_workspace",
    "workspace_sync_push": "push_workspace_sync",
    "workspace_export": "export_workspace",
    "workspace_file_list": "list_workspace_files",
    "workspace_file_read": "read_workspace_file",
    "workspace_file_write": "write_workspace_file",
    "workspace_patch_apply": "apply_workspace_patch",
    "workspace_reset": "reset_workspace",
    "snapshot_create": "create_snapshot",
    "snapshot_list": "list_snapshots",
    "snapshot_delete": "delete_snapshot",
    "workspace_disk_export": "export_workspace_disk",
    "workspace_disk_list": "list_workspace_disk",
    "workspace_disk_read": "read_workspace_disk",
    "shell_open": "open_shell",
    "shell_read": "read_shell",
    "shell_write": "write_shell",
    "shell_signal": "signal_shell",
    "shell_resize": "resize_shell",
    "shell_close": "close_shell",
    "service_start": "start_service",
    "service_list": "list_services",
    "service_status": "status_service",
    "service_logs": "logs_service",
    "service_stop": "stop_service",
}
HIDDEN = frozenset({"on_output", "on_phase", "progress"})
FULL_ONLY = frozenset(
    {"network_policy", "allow_hosts", "clear_allow_hosts", "secrets", "secret_env"}
)
# Host paths the model may name, and whether they must exist already.
HOST_PATHS = {"seed_path": True, "source_path": True, "output_path": False}


def _drop_host_paths(logs: dict[str, Any]) -> dict[str, Any]:
    for entry in logs["entries"]:  # they mean nothing to the model and reveal the host
        entry.pop("stdout_file", None)
        entry.pop("stderr_file", None)
    return logs


def _as_is(result: dict[str, Any]) -> dict[str, Any]:
    return result


AFTER: dict[str, Callable[[Any], dict[str, Any]]] = {
    "vm_list_environments": lambda envs: {"environments": envs},
    "workspace_logs": _drop_host_paths,
}


def _start_service(pyro: Pyro) -> Callable[..., dict[str, Any]]:
    """service_start as 3.11's MCP tool takes it: one ready_* argument instead of a readiness
    dict (and two of them refused, where 3.11 silently took the first)."""

    def start_service(
        workspace_id: str,
        service_name: str,
        command: str | list[str],
        cwd: str = "/workspace",
        ready_file: str | None = None,
        ready_tcp: str | None = None,
        ready_http: str | None = None,
        ready_command: str | None = None,
        ready_timeout_seconds: int = 30,
        ready_interval_ms: int = 500,
        secret_env: dict[str, str] | None = None,
        published_ports: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        from pyro_mcp.runtime.workspaces.services import readiness_from_options

        readiness = readiness_from_options(
            ready_file=ready_file, ready_tcp=ready_tcp, ready_http=ready_http,
            ready_command=ready_command,
        )  # fmt: skip
        return pyro.start_service(
            workspace_id, service_name, command=command, cwd=cwd, readiness=readiness,
            ready_timeout_seconds=ready_timeout_seconds, ready_interval_ms=ready_interval_ms,
            secret_env=secret_env, published_ports=published_ports,
        )  # fmt: skip

    return start_service


# Tools whose parameters are not their SDK method's.
ADAPTERS: dict[str, Callable[[Pyro], Callable[..., dict[str, Any]]]] = {
    "service_start": _start_service,
}


class PyroTools:
    """Every tool of every profile; a profile picks some of them by name."""

    def __init__(self, pyro: Pyro, roots: Roots, *, full: bool = True) -> None:
        self.pyro, self.roots = pyro, roots
        self.hidden = HIDDEN if full else HIDDEN | FULL_ONLY

    def table(self) -> dict[str, tuple[Tool, str]]:
        """Tool name -> (function, description)."""
        return {name: (self._tool(name), text) for name, text in DESCRIPTIONS.items()}

    def _tool(self, name: str) -> Tool:
        adapter = ADAPTERS.get(name)
        method: Callable[..., Any] = (
            adapter(self.pyro) if adapter else getattr(self.pyro, SDK_METHODS[name])
        )
        signature = inspect.signature(method, eval_str=True)
        params = [p for p in signature.parameters.values() if p.name not in self.hidden]
        after: Callable[[Any], dict[str, Any]] = AFTER.get(name, _as_is)

        def call(**arguments: Any) -> dict[str, Any]:
            try:
                for key, existing in HOST_PATHS.items():
                    if arguments.get(key) is not None:
                        check = self.roots.existing if existing else self.roots.new
                        arguments[key] = check(key, str(arguments[key]))
                if arguments.get("secrets") is not None:
                    arguments["secrets"] = self._secret_files(arguments["secrets"])
                return bound(after(method(**arguments)))
            except PyroError as exc:
                raise ToolError(str(exc)) from exc

        call.__name__ = name
        call.__doc__ = DESCRIPTIONS[name]
        call.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=params, return_annotation=dict[str, Any]
        )
        return call

    def _secret_files(self, secrets: Any) -> Any:
        """Each secret's file_path resolved inside the roots (the rest the SDK checks)."""
        if not isinstance(secrets, list):
            return secrets
        checked = []
        for entry in secrets:
            if isinstance(entry, dict) and entry.get("file_path") is not None:
                path = self.roots.existing("secrets[].file_path", str(entry["file_path"]))
                entry = {**entry, "file_path": path}
            checked.append(entry)
        return checked
