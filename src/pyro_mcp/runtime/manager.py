"""VmManager: the runtime behind every face, wiring the environment, VM and workspace services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_mcp.environments.service import EnvironmentService
from pyro_mcp.environments.store import EnvironmentStore
from pyro_mcp.runtime import snapshots
from pyro_mcp.runtime.vms import VmService
from pyro_mcp.runtime.workspaces.commands import WorkspaceCommands
from pyro_mcp.runtime.workspaces.files import WorkspaceFiles
from pyro_mcp.runtime.workspaces.service import WorkspaceService
from pyro_mcp.state.store import StateStore


class VmManager:
    """One cache and one state directory, and the services that use them (default: XDG dirs)."""

    def __init__(
        self, *, cache_dir: str | Path | None = None, state_dir: str | Path | None = None
    ) -> None:
        store = EnvironmentStore(Path(cache_dir) / "environments" if cache_dir else None)
        self.environments = EnvironmentService(store)
        self.vms = VmService(self.environments, StateStore(Path(state_dir) if state_dir else None))
        self.workspaces = WorkspaceService(self.vms)
        self.commands = WorkspaceCommands(self.workspaces)
        self.files = WorkspaceFiles(self.workspaces)

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
