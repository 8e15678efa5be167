"""The Python SDK: `Pyro`, one method per capability; the CLI and MCP server call only these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_mcp.environments.build import Progress
from pyro_mcp.environments.service import EnvironmentService
from pyro_mcp.environments.store import EnvironmentStore


class Pyro:
    """Entry point of the SDK. `cache_dir` moves the artefact cache (default: XDG cache)."""

    def __init__(self, *, cache_dir: str | Path | None = None) -> None:
        store = EnvironmentStore(Path(cache_dir) / "environments" if cache_dir else None)
        self.environments = EnvironmentService(store)

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
        """Remove stale or broken environment installs and unreferenced artefacts."""
        return self.environments.prune()

    # --- host ----------------------------------------------------------------------------

    def doctor(self, *, probe: bool = True) -> dict[str, Any]:
        """What this host can run and why; never raises for a missing piece."""
        from pyro_mcp.host.doctor import doctor_report

        return doctor_report(self.environments, probe=probe)

    def install_firecracker(self, version: str | None = None) -> dict[str, Any]:
        """Download the pinned official Firecracker release and verify it before installing."""
        from pyro_mcp.vmm.firecracker_binary import DEFAULT_VERSION, install_firecracker

        return install_firecracker(version or DEFAULT_VERSION)
