"""Streamable HTTP for the MCP server, behind a bearer token.

Over HTTP anyone who can reach the port can drive VMs, so a token is required; only a
server bound to a loopback address may run without one, and only when asked to.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import TYPE_CHECKING, Any

from pyro_mcp.errors import InvalidArgumentError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from mcp.server.mcpserver import MCPServer

    Scope = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
    Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
    App = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_ENV = "PYRO_MCP_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_auth(host: str, token: str | None, no_auth: bool) -> None:
    """Refuse a configuration that would serve VMs to anyone who can connect."""
    if no_auth and not is_loopback(host):
        raise InvalidArgumentError(
            f"--no-auth is only allowed on a loopback address, not {host!r}",
            hint=f"set {TOKEN_ENV} to a secret token instead",
        )
    if not no_auth and not token:
        raise InvalidArgumentError(
            f"streamable HTTP needs a bearer token: {TOKEN_ENV} is not set",
            hint=f"export {TOKEN_ENV}=$(openssl rand -hex 32) (clients send "
            "`Authorization: Bearer <token>`), or on a loopback address pass --no-auth",
        )


class BearerAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>`."""

    def __init__(self, app: App, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorized(scope):
            body = json.dumps({"error": "missing or wrong bearer token"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer realm="pyro-mcp"'),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        return hmac.compare_digest(given, self.expected)


def serve_http(server: MCPServer, *, host: str, port: int, token: str | None) -> None:
    """Serve until interrupted (the caller has run check_auth)."""
    import uvicorn

    app: Any = server.streamable_http_app(host=host)
    if token:
        app = BearerAuth(app, token)
    uvicorn.run(app, host=host, port=port, log_level="warning")
