"""The MCP server: a profile's tools on the official MCP SDK's MCPServer.

Profiles, smallest first: `vm-run` (only vm_run), `workspace-core` (vm_run and the 15
workspace tools an agent needs), `workspace-full` (every tool whose capability exists).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.mcp.profiles import DEFAULT_PROFILE, PROFILES
from pyro_mcp.mcp.roots import Roots, default_roots
from pyro_mcp.mcp.tools import PyroTools
from pyro_mcp.version import __version__

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from pyro_mcp.sdk import Pyro


INSTRUCTIONS = (
    "pyro runs commands in disposable Linux microVMs, never on the user's machine. Use vm_run "
    "for one command. Use workspace_create once and then workspace_exec, the file tools and "
    "workspace_patch_apply when work must persist across calls; workspace_diff shows what "
    "changed, workspace_reset starts over, workspace_delete frees it."
)


def create_server(
    pyro: Pyro | None = None,
    *,
    profile: str = DEFAULT_PROFILE,
    allowed_roots: Iterable[str | os.PathLike[str]] | None = None,
) -> MCPServer:
    """An MCPServer offering `profile`'s tools for `pyro` (default: a new Pyro()); host paths
    must lie in `allowed_roots` (default: the current working directory, unless that is `/`)."""
    if profile not in PROFILES:
        raise InvalidArgumentError(
            f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}"
        )
    from mcp.server.mcpserver import MCPServer

    if pyro is None:
        from pyro_mcp.sdk import Pyro

        pyro = Pyro()

    roots = Roots(allowed_roots) if allowed_roots is not None else default_roots(os.getcwd(), [])
    server: MCPServer = MCPServer(
        name="pyro_mcp", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )
    table = PyroTools(pyro, roots, full=profile == "workspace-full").table()
    for name in PROFILES[profile]:
        fn, description = table[name]
        server.add_tool(fn, name=name, description=description)
    return server
