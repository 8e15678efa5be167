"""`pyro mcp serve`: the MCP server over stdio (default) or streamable HTTP."""

from __future__ import annotations

import argparse
import os
from typing import Any

DEFAULT_PORT = 8765


def register(commands: Any) -> None:
    from pyro_mcp.mcp.profiles import DEFAULT_PROFILE, PROFILES

    mcp = commands.add_parser("mcp", help="serve pyro's tools to MCP hosts")
    sub = mcp.add_subparsers(dest="mcp_command", metavar="SUBCOMMAND", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the MCP server (stdio unless --transport says otherwise)",
        description="Serve pyro's tools to an MCP host. Host paths the model names must lie "
        "inside the allowed roots: the working directory (unless it is /), plus any "
        "--allow-path.",
    )
    serve.add_argument(
        "--profile", choices=list(PROFILES), default=DEFAULT_PROFILE,
        help=f"which tools to offer (default {DEFAULT_PROFILE})",
    )  # fmt: skip
    serve.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port")
    serve.add_argument(
        "--allow-path", action="append", default=[], metavar="DIR",
        help="another host directory the model may name (repeatable)",
    )  # fmt: skip
    serve.add_argument(
        "--no-auth", action="store_true",
        help="serve HTTP without a bearer token (loopback addresses only)",
    )  # fmt: skip
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from pyro_mcp.mcp import http
    from pyro_mcp.mcp.roots import default_roots
    from pyro_mcp.mcp.server import create_server
    from pyro_mcp.sdk import Pyro

    token = os.environ.get(http.TOKEN_ENV) or None
    if args.transport == "streamable-http":
        http.check_auth(args.host, token, args.no_auth)
    roots = default_roots(os.getcwd(), args.allow_path).paths
    server = create_server(Pyro(), profile=args.profile, allowed_roots=list(roots))
    if args.transport == "stdio":
        server.run("stdio")
    else:
        http.serve_http(server, host=args.host, port=args.port, token=token)
    return 0
