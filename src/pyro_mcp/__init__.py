"""pyro-mcp: disposable Linux microVMs for AI coding agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# A literal, read by the build backend too: importlib.metadata costs ~60 ms per process start.
__version__ = "0.1.0"

if TYPE_CHECKING:
    from pyro_mcp.sdk import Pyro

__all__ = ["Pyro", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use so that `pyro --version` and the guest-side modules stay light.
    if name == "Pyro":
        from pyro_mcp.sdk import Pyro

        return Pyro
    raise AttributeError(name)
