"""VmManager: the runtime behind every face, wiring the environment, VM and workspace services."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_mcp.environments.service import EnvironmentService
from pyro_mcp.environments.store import EnvironmentStore
from pyro_mcp.runtime import snapshots
from pyro_mcp.runtime.vms import VmService
from pyro_mcp.state.store import StateStore

if TYPE_CHECKING:
    from pyro_mcp.runtime.workspaces.commands import WorkspaceCommands
    from pyro_mcp.runtime.workspaces.disk_tools import WorkspaceDisk
    from pyro_mcp.runtime.workspaces.files import WorkspaceFiles
    from pyro_mcp.runtime.workspaces.service import WorkspaceService
    from pyro_mcp.runtime.workspaces.services import WorkspaceServices
    from pyro_mcp.runtime.workspaces.shells import WorkspaceShells
    from pyro_mcp.runtime.workspaces.snapshots import WorkspaceSnapshots
    from pyro_mcp.runtime.workspaces.updates import WorkspaceUpdates


class VmManager:
    """One cache and one state directory, and the services that use them (default: XDG dirs)."""

    def __init__(
        self, *, cache_dir: str | Path | None = None, state_dir: str | Path | None = None
    ) -> None:
        store = EnvironmentStore(Path(cache_dir) / "environments" if cache_dir else None)
        self.environments = EnvironmentService(store)
        self.vms = VmService(self.environments, StateStore(Path(state_dir) if state_dir else None))

    # The workspace services are built on first use: a one-shot `pyro run` never imports them.
    @cached_property
    def workspaces(self) -> WorkspaceService:
        from pyro_mcp.runtime.workspaces.service import WorkspaceService

        return WorkspaceService(self.vms)

    @cached_property
    def commands(self) -> WorkspaceCommands:
        from pyro_mcp.runtime.workspaces.commands import WorkspaceCommands

        return WorkspaceCommands(self.workspaces)

    @cached_property
    def files(self) -> WorkspaceFiles:
        from pyro_mcp.runtime.workspaces.files import WorkspaceFiles

        return WorkspaceFiles(self.workspaces)

    @cached_property
    def shells(self) -> WorkspaceShells:
        from pyro_mcp.runtime.workspaces.shells import WorkspaceShells

        return WorkspaceShells(self.workspaces)

    @cached_property
    def services(self) -> WorkspaceServices:
        from pyro_mcp.runtime.workspaces.services import WorkspaceServices

        return WorkspaceServices(self.workspaces)

    @cached_property
    def disk(self) -> WorkspaceDisk:
        from pyro_mcp.runtime.workspaces.disk_tools import WorkspaceDisk

        return WorkspaceDisk(self.workspaces)

    @cached_property
    def snapshots(self) -> WorkspaceSnapshots:
        from pyro_mcp.runtime.workspaces.snapshots import WorkspaceSnapshots

        return WorkspaceSnapshots(self.workspaces)

    @cached_property
    def updates(self) -> WorkspaceUpdates:
        from pyro_mcp.runtime.workspaces.updates import WorkspaceUpdates

        return WorkspaceUpdates(self.workspaces)

    def prune(self) -> dict[str, Any]:
        """Remove stale environment installs and artefacts, and snapshots nothing can use."""
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
