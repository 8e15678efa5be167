"""The Python SDK: `Pyro`, one method per capability; the CLI and MCP server call only these."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.runtime.arguments import Command, OutputCallback
from pyro_mcp.runtime.manager import VmManager

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from pyro_mcp.environments.build import Progress
    from pyro_mcp.runtime.workspaces.commands import WorkspaceCommands
    from pyro_mcp.runtime.workspaces.files import WorkspaceFiles
    from pyro_mcp.runtime.workspaces.service import WorkspaceService


def _redacted[**P, R](method: Callable[P, R]) -> Callable[P, R]:
    """A workspace call (`self, workspace_id, ...`) whose result and errors leave with the
    workspace's secrets redacted: every face goes through here, so none can show one."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        from pyro_mcp.runtime.workspaces import secrets

        pyro = args[0]
        assert isinstance(pyro, Pyro)
        workspace_id = args[1] if len(args) > 1 else kwargs.get("workspace_id")
        redactor = pyro.workspaces.redactor(workspace_id)
        try:
            result = method(*args, **kwargs)
        except Exception as exc:
            secrets.redact_error(exc, redactor)
            raise
        return secrets.redact_tree(result, redactor)

    return call


class Pyro:
    """Entry point of the SDK. `cache_dir` and `state_dir` move the artefact cache and the
    state (default: XDG directories); `manager` shares one VmManager between several."""

    def __init__(
        self,
        manager: VmManager | None = None,
        *,
        cache_dir: str | Path | None = None,
        state_dir: str | Path | None = None,
    ) -> None:
        if manager is not None and (cache_dir is not None or state_dir is not None):
            raise InvalidArgumentError(
                "pass either a manager or cache_dir/state_dir, not both",
                hint="a VmManager already has its directories: VmManager(cache_dir=...)",
            )
        self.manager = manager or VmManager(cache_dir=cache_dir, state_dir=state_dir)
        self.environments = self.manager.environments
        self.vms = self.manager.vms

    @property
    def workspaces(self) -> WorkspaceService:
        return self.manager.workspaces

    @property
    def _commands(self) -> WorkspaceCommands:
        return self.manager.commands

    @property
    def _files(self) -> WorkspaceFiles:
        return self.manager.files

    # --- one-shot runs and VMs -------------------------------------------------------------

    def run_in_vm(
        self,
        *,
        environment: str,
        command: Command,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        timeout_seconds: int = 30,
        ttl_seconds: int = 600,
        network: bool = False,
        allow_host_compat: bool = False,
        on_output: OutputCallback | None = None,
        on_phase: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Run one command in a fresh VM that is deleted afterwards, whatever happens.

        `command` is a shell string (run with `sh -lc`) or an argv list (run exactly).
        """
        return self.vms.run_in_vm(
            environment=environment,
            command=command,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            timeout_seconds=timeout_seconds,
            ttl_seconds=ttl_seconds,
            network=network,
            allow_host_compat=allow_host_compat,
            on_output=on_output,
            on_phase=on_phase,
        )

    def create_vm(
        self,
        *,
        environment: str,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        ttl_seconds: int = 600,
        network: bool = False,
        allow_host_compat: bool = False,
    ) -> dict[str, Any]:
        """Record a VM in state `created`; start_vm boots it."""
        return self.vms.create_vm(
            environment=environment,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            ttl_seconds=ttl_seconds,
            network=network,
            allow_host_compat=allow_host_compat,
        )

    def start_vm(self, vm_id: str) -> dict[str, Any]:
        """Boot a created or stopped VM and wait until its guest agent answers."""
        return self.vms.start_vm(vm_id)

    def exec_vm(self, vm_id: str, *, command: Command, timeout_seconds: int = 30) -> dict[str, Any]:
        """Run one command in a started VM, then delete the VM."""
        return self.vms.exec_vm(vm_id, command=command, timeout_seconds=timeout_seconds)

    def stop_vm(self, vm_id: str) -> dict[str, Any]:
        """Stop a VM: its VMM and supervisor end, the record stays as `stopped`."""
        return self.vms.stop_vm(vm_id)

    def delete_vm(self, vm_id: str) -> dict[str, Any]:
        """Stop the VM if needed and remove every trace of it."""
        return self.vms.delete_vm(vm_id)

    def status_vm(self, vm_id: str) -> dict[str, Any]:
        """The VM's record, reconciled with its supervisor's liveness."""
        return self.vms.status_vm(vm_id)

    def network_info_vm(self, vm_id: str) -> dict[str, Any]:
        """The VM's network: guest and gateway addresses, MAC, DNS, allowlist, or why none."""
        return self.vms.network_info_vm(vm_id)

    def reap_expired(self) -> dict[str, Any]:
        """Delete every VM past its TTL (supervisors also do this on their own)."""
        return self.vms.reap_expired()

    # --- workspaces ----------------------------------------------------------------------

    def create_workspace(
        self,
        *,
        environment: str,
        vcpu_count: int = 1,
        mem_mib: int = 1024,
        ttl_seconds: int = 600,
        network_policy: str = "off",
        allow_host_compat: bool = False,
        seed_path: str | Path | None = None,
        secrets: list[dict[str, str]] | None = None,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        allow_hosts: list[str] | None = None,
        on_phase: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Boot a persistent workspace; `seed_path` (a directory or .tar/.tar.gz/.tgz) fills
        /workspace and becomes the baseline that diff and reset compare against. With a
        network policy, `allow_hosts` (domains, `*.domain`, IPv4 CIDRs) limits egress to them."""
        del allow_host_compat  # accepted for compatibility: commands never run on the host
        return self.workspaces.create(
            environment=environment,
            vcpu_count=vcpu_count,
            mem_mib=mem_mib,
            ttl_seconds=ttl_seconds,
            network_policy=network_policy,
            seed_path=None if seed_path is None else str(seed_path),
            secrets=secrets,
            name=name,
            labels=labels,
            allow_hosts=allow_hosts,
            on_phase=on_phase,
        )

    def list_workspaces(self) -> dict[str, Any]:
        """Every workspace, most recently active first (expired ones are deleted on the way)."""
        return self.workspaces.list()

    @_redacted
    def status_workspace(self, workspace_id: str) -> dict[str, Any]:
        """The workspace's record, reconciled with its VM (a dead VM shows `stopped`, why)."""
        return self.workspaces.view(workspace_id)

    @_redacted
    def update_workspace(
        self,
        workspace_id: str,
        *,
        name: str | None = None,
        clear_name: bool = False,
        labels: dict[str, str] | None = None,
        clear_labels: list[str] | None = None,
        allow_hosts: list[str] | None = None,
        clear_allow_hosts: bool = False,
    ) -> dict[str, Any]:
        """Set or clear the name; add, change or remove labels; replace or lift the egress
        allowlist (a running workspace's filter changes at once)."""
        return self.manager.updates.update(
            workspace_id,
            name=name,
            clear_name=clear_name,
            labels=labels,
            clear_labels=clear_labels,
            allow_hosts=allow_hosts,
            clear_allow_hosts=clear_allow_hosts,
        )

    @_redacted
    def stop_workspace(self, workspace_id: str) -> dict[str, Any]:
        """Stop the workspace's VM; its disk stays for start_workspace."""
        return self.workspaces.stop(workspace_id)

    @_redacted
    def start_workspace(
        self, workspace_id: str, *, on_phase: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Boot a stopped workspace on its own disk."""
        return self.workspaces.start(workspace_id, on_phase=on_phase)

    @_redacted
    def delete_workspace(self, workspace_id: str) -> dict[str, Any]:
        """Stop the workspace and remove its disk, baseline and command logs."""
        return self.workspaces.delete(workspace_id)

    @_redacted
    def reset_workspace(
        self,
        workspace_id: str,
        *,
        snapshot: str = "baseline",
        on_phase: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """A fresh VM on the disk of named snapshot `snapshot`, or (baseline) with
        /workspace back at the seed; the command history stays."""
        return self.workspaces.reset(workspace_id, snapshot=snapshot, on_phase=on_phase)

    @_redacted
    def export_workspace_disk(
        self, workspace_id: str, *, output_path: str | Path
    ) -> dict[str, Any]:
        """One ext4 image of a stopped workspace's root (as its guest saw it) at a new host
        path; a helper VM reads the disk, the host never parses it."""
        return self.manager.disk.export(workspace_id, output_path=str(output_path))

    @_redacted
    def list_workspace_disk(
        self, workspace_id: str, *, path: str = "/workspace", recursive: bool = False
    ) -> dict[str, Any]:
        """A directory of a stopped workspace's /workspace, read from its disk."""
        return self.manager.disk.list(workspace_id, path=path, recursive=recursive)

    @_redacted
    def read_workspace_disk(
        self, workspace_id: str, path: str, *, max_bytes: int = 65536
    ) -> dict[str, Any]:
        """The first max_bytes of a file of a stopped workspace's /workspace."""
        return self.manager.disk.read(workspace_id, path, max_bytes=max_bytes)

    @_redacted
    def create_snapshot(self, workspace_id: str, snapshot_name: str) -> dict[str, Any]:
        """Snapshot the started workspace's whole disk (installed packages too), in time that
        does not grow with what it holds; reset_workspace(snapshot=...) goes back to it."""
        return self.manager.snapshots.create(workspace_id, snapshot_name)

    @_redacted
    def list_snapshots(self, workspace_id: str) -> dict[str, Any]:
        """The baseline, then the named snapshots, newest first."""
        return self.manager.snapshots.list(workspace_id)

    @_redacted
    def delete_snapshot(self, workspace_id: str, snapshot_name: str) -> dict[str, Any]:
        """Drop a named snapshot (the baseline stays)."""
        return self.manager.snapshots.delete(workspace_id, snapshot_name)

    @_redacted
    def exec_workspace(
        self,
        workspace_id: str,
        *,
        command: Command,
        timeout_seconds: int = 30,
        secret_env: dict[str, str] | None = None,
        on_output: OutputCallback | None = None,
    ) -> dict[str, Any]:
        """Run a command in /workspace (a string runs with `sh -lc`, a list as is)."""
        return self._commands.exec(
            workspace_id,
            command=command,
            timeout_seconds=timeout_seconds,
            secret_env=secret_env,
            on_output=on_output,
        )

    # --- shells --------------------------------------------------------------------------

    @_redacted
    def open_shell(
        self,
        workspace_id: str,
        *,
        cwd: str = "/workspace",
        cols: int = 120,
        rows: int = 30,
        secret_env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Start an interactive shell on a PTY in the workspace; it lives in the guest until
        closed or the workspace stops."""
        return self.manager.shells.open(
            workspace_id, cwd=cwd, cols=cols, rows=rows, secret_env=secret_env
        )

    @_redacted
    def read_shell(
        self,
        workspace_id: str,
        shell_id: str,
        *,
        cursor: int = 0,
        max_chars: int = 65536,
        plain: bool = False,
        wait_for_idle_ms: int | None = None,
    ) -> dict[str, Any]:
        """The shell's output from `cursor` (pass back `next_cursor`); `plain` renders it as a
        terminal shows it; `wait_for_idle_ms` first waits until output has been quiet that long."""
        return self.manager.shells.read(
            workspace_id, shell_id, cursor=cursor, max_chars=max_chars, plain=plain,
            wait_for_idle_ms=wait_for_idle_ms,
        )  # fmt: skip

    @_redacted
    def write_shell(
        self, workspace_id: str, shell_id: str, *, input: str, append_newline: bool = True
    ) -> dict[str, Any]:
        """Type `input` into the shell (and Enter, unless append_newline=False)."""
        return self.manager.shells.write(
            workspace_id, shell_id, input=input, append_newline=append_newline
        )

    @_redacted
    def signal_shell(
        self, workspace_id: str, shell_id: str, *, signal_name: str = "INT"
    ) -> dict[str, Any]:
        """Send HUP, INT, TERM or KILL to the shell's foreground job, as a terminal would."""
        return self.manager.shells.signal(workspace_id, shell_id, signal_name=signal_name)

    @_redacted
    def resize_shell(
        self, workspace_id: str, shell_id: str, *, cols: int, rows: int
    ) -> dict[str, Any]:
        """Change the shell's window size (programs see SIGWINCH)."""
        return self.manager.shells.resize(workspace_id, shell_id, cols=cols, rows=rows)

    @_redacted
    def close_shell(self, workspace_id: str, shell_id: str) -> dict[str, Any]:
        """End the shell and every process it started."""
        return self.manager.shells.close(workspace_id, shell_id)

    # --- services ------------------------------------------------------------------------

    @_redacted
    def start_service(
        self,
        workspace_id: str,
        service_name: str,
        *,
        command: Command,
        cwd: str = "/workspace",
        readiness: dict[str, Any] | None = None,
        ready_timeout_seconds: int = 30,
        ready_interval_ms: int = 500,
        secret_env: dict[str, str] | None = None,
        published_ports: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Start a long-running process; returns once its readiness check passes (or it failed:
        exited first, or timed out and was killed). Published ports live as long as it runs."""
        return self.manager.services.start(
            workspace_id, service_name, command=command, cwd=cwd, readiness=readiness,
            ready_timeout_seconds=ready_timeout_seconds, ready_interval_ms=ready_interval_ms,
            secret_env=secret_env, published_ports=published_ports,
        )  # fmt: skip

    @_redacted
    def list_services(self, workspace_id: str) -> dict[str, Any]:
        """Every service of the workspace, running or ended, with its state."""
        return self.manager.services.list(workspace_id)

    @_redacted
    def status_service(self, workspace_id: str, service_name: str) -> dict[str, Any]:
        """A service's state (an exit is seen here without anything polling in between)."""
        return self.manager.services.status(workspace_id, service_name)

    @_redacted
    def logs_service(
        self, workspace_id: str, service_name: str, *, tail_lines: int = 200, all: bool = False
    ) -> dict[str, Any]:
        """A service's stdout and stderr: the last `tail_lines` lines, or everything kept."""
        return self.manager.services.logs(
            workspace_id, service_name, tail_lines=tail_lines, all=all
        )

    @_redacted
    def stop_service(self, workspace_id: str, service_name: str) -> dict[str, Any]:
        """TERM the service's process group, KILL it after a grace; its ports close."""
        return self.manager.services.stop(workspace_id, service_name)

    @_redacted
    def logs_workspace(self, workspace_id: str) -> dict[str, Any]:
        """Every command run in the workspace with the tail of its output, oldest first."""
        return self._commands.logs(workspace_id)

    @_redacted
    def push_workspace_sync(
        self, workspace_id: str, source_path: str | Path, *, dest: str = "/workspace"
    ) -> dict[str, Any]:
        """Unpack a host directory or archive over `dest` inside /workspace."""
        return self._files.push(workspace_id, str(source_path), dest=dest)

    @_redacted
    def export_workspace(
        self, workspace_id: str, path: str, *, output_path: str | Path
    ) -> dict[str, Any]:
        """Copy a file or directory of /workspace to a host path that must not exist yet."""
        return self._files.export(workspace_id, path, output_path=str(output_path))

    @_redacted
    def diff_workspace(self, workspace_id: str) -> dict[str, Any]:
        """What changed in /workspace since the baseline: a summary and a git-style patch."""
        return self._files.diff(workspace_id)

    @_redacted
    def list_workspace_files(
        self, workspace_id: str, *, path: str = "/workspace", recursive: bool = False
    ) -> dict[str, Any]:
        """A directory's entries (every entry below it with recursive)."""
        return self._files.list(workspace_id, path=path, recursive=recursive)

    @_redacted
    def read_workspace_file(
        self, workspace_id: str, path: str, *, max_bytes: int = 65536
    ) -> dict[str, Any]:
        """The first max_bytes (at most 1 MiB) of a file; a bigger file is `truncated`."""
        return self._files.read(workspace_id, path, max_bytes=max_bytes)

    @_redacted
    def write_workspace_file(self, workspace_id: str, path: str, *, text: str) -> dict[str, Any]:
        """Create or replace a text file (at most 1 MiB) atomically."""
        return self._files.write(workspace_id, path, text=text)

    @_redacted
    def apply_workspace_patch(self, workspace_id: str, *, patch: str) -> dict[str, Any]:
        """Apply a unified diff; every hunk is checked first and a failing patch changes nothing."""
        return self._files.apply_patch(workspace_id, patch=patch)

    # --- environments --------------------------------------------------------------------

    def list_environments(self) -> list[dict[str, Any]]:
        """Every catalog environment with whether it is installed."""
        return self.environments.list()

    def inspect_environment(self, environment: str) -> dict[str, Any]:
        """One environment's catalog entry and, when installed, its manifest."""
        return self.environments.inspect(environment)

    def pull_environment(
        self, environment: str, *, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Build `environment` from Debian packages unless a verified copy is cached."""
        return self.environments.pull(environment, progress)

    def prune_environments(self) -> dict[str, Any]:
        """Remove stale or broken environment installs, stale snapshots, unreferenced artefacts."""
        return self.manager.prune()

    # --- MCP -------------------------------------------------------------------------------

    def create_server(
        self,
        *,
        profile: str = "workspace-full",
        allowed_roots: list[str | Path] | None = None,
    ) -> MCPServer:
        """An MCP server (the official SDK's MCPServer) offering `profile`'s tools; host paths
        the model names must lie in `allowed_roots` (default: the working directory)."""
        from pyro_mcp.mcp.server import create_server

        return create_server(self, profile=profile, allowed_roots=allowed_roots)

    # --- host ----------------------------------------------------------------------------

    def doctor(self, *, probe: bool = True) -> dict[str, Any]:
        """What this host can run and why; never raises for a missing piece."""
        from pyro_mcp.runtime.doctor import doctor_report

        return doctor_report(self.environments, probe=probe)

    def install_firecracker(self, version: str | None = None) -> dict[str, Any]:
        """Download the pinned official Firecracker release and verify it before installing."""
        from pyro_mcp.vmm.firecracker.install import install_firecracker
        from pyro_mcp.vmm.firecracker.locate import DEFAULT_VERSION

        return install_firecracker(version or DEFAULT_VERSION)
