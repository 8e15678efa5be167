"""pyro-mcp: disposable Linux microVMs for AI coding agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyro_mcp.version import __version__

if TYPE_CHECKING:
    from pyro_mcp.mcp.server import create_server
    from pyro_mcp.runtime.manager import VmManager
    from pyro_mcp.sdk import Pyro

__all__ = ["Pyro", "VmManager", "__version__", "create_server"]

# Imported on first use, so that `pyro --version` and the CLI's light commands stay light.
_LAZY = {
    "Pyro": "pyro_mcp.sdk",
    "VmManager": "pyro_mcp.runtime.manager",
    "create_server": "pyro_mcp.mcp.server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyro_mcp' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
