"""The Python SDK: `Pyro`, one method per capability; the CLI and MCP server call only these."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_mcp.environments.service import EnvironmentService
from pyro_mcp.environments.store import EnvironmentStore
from pyro_mcp.runtime.vms import Command, OutputCallback, VmService
from pyro_mcp.state.store import StateStore

if TYPE_CHECKING:
    from pyro_mcp.environments.build import Progress


class Pyro:
    """Entry point of the SDK. `cache_dir` moves the artefact cache (default: XDG cache)."""

    def __init__(
        self, *, cache_dir: str | Path | None = None, state_dir: str | Path | None = None
    ) -> None:
        store = EnvironmentStore(Path(cache_dir) / "environments" if cache_dir else None)
        self.environments = EnvironmentService(store)
        self.vms = VmService(self.environments, StateStore(Path(state_dir) if state_dir else None))

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
        """The VM's network settings (guest networking is off in this version)."""
        return self.vms.network_info_vm(vm_id)

    def reap_expired(self) -> dict[str, Any]:
        """Delete every VM past its TTL (supervisors also do this on their own)."""
        return self.vms.reap_expired()

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
        from pyro_mcp.runtime import snapshots

        result = self.environments.prune()
        installed = set()
        for env in self.environments.list():
            manifest = env.get("install_manifest")
            if manifest:
                a = manifest["artifacts"]
                installed.add(
                    (a["kernel"]["sha256"], a["initramfs"]["sha256"], a["rootfs"]["sha256"])
                )
        result["deleted_snapshots"] = snapshots.prune(self.vms.snapshots, installed)
        return result

    # --- host ----------------------------------------------------------------------------

    def doctor(self, *, probe: bool = True) -> dict[str, Any]:
        """What this host can run and why; never raises for a missing piece."""
        from pyro_mcp.host.doctor import doctor_report

        return doctor_report(self.environments, probe=probe)

    def install_firecracker(self, version: str | None = None) -> dict[str, Any]:
        """Download the pinned official Firecracker release and verify it before installing."""
        from pyro_mcp.vmm.firecracker_binary import DEFAULT_VERSION, install_firecracker

        return install_firecracker(version or DEFAULT_VERSION)
