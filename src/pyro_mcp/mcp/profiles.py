"""The MCP server's tool profiles, by name: plain data, so `pyro mcp serve --help` stays light."""

from __future__ import annotations

VM_RUN = ("vm_run",)
WORKSPACE_CORE = (
    *VM_RUN,
    "workspace_create", "workspace_list", "workspace_update", "workspace_status",
    "workspace_logs", "workspace_diff", "workspace_delete", "workspace_exec",
    "workspace_sync_push", "workspace_export", "workspace_file_list", "workspace_file_read",
    "workspace_file_write", "workspace_patch_apply", "workspace_reset",
)  # fmt: skip
WORKSPACE_FULL = (
    *WORKSPACE_CORE,
    "vm_list_environments", "vm_create", "vm_start", "vm_exec", "vm_stop", "vm_delete",
    "vm_status", "vm_network_info", "vm_reap_expired", "workspace_stop", "workspace_start",
    "shell_open", "shell_read", "shell_write", "shell_signal", "shell_resize", "shell_close",
    "service_start", "service_list", "service_status", "service_logs", "service_stop",
    "snapshot_create", "snapshot_list", "snapshot_delete",
    "workspace_disk_export", "workspace_disk_list", "workspace_disk_read",
)  # fmt: skip
PROFILES = {"vm-run": VM_RUN, "workspace-core": WORKSPACE_CORE, "workspace-full": WORKSPACE_FULL}
DEFAULT_PROFILE = "workspace-full"
