"""Firecracker's API client: HTTP/1.1 over the UNIX socket the VMM serves (`api.sock`)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from pyro_mcp.errors import VmmError
from pyro_mcp.host.unix import connect_unix

API_TIMEOUT_S = 10.0


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a UNIX socket, which is how Firecracker serves its API."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = connect_unix(self._path, self.timeout)


def _without_none(value: Any) -> Any:
    """Drop None fields: an unset option is left out, so Firecracker applies its default."""
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_none(item) for item in value]
    return value


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _fault_message(raw: bytes) -> str:
    fault = (_json_object(raw) or {}).get("fault_message")
    if isinstance(fault, str) and fault:
        return fault
    return raw.decode("utf-8", errors="replace").strip()[:500] or "no reason given"


class FirecrackerApi:
    """Firecracker's API as a table of resources: put, patch, get; anything but 2xx raises."""

    def __init__(self, socket_path: Path, timeout: float = API_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def put(self, resource: str, body: dict[str, Any]) -> None:
        self._call("PUT", resource, body)

    def patch(self, resource: str, body: dict[str, Any]) -> None:
        self._call("PATCH", resource, body)

    def get(self, resource: str) -> dict[str, Any]:
        value = _json_object(self._call("GET", resource, None))
        if value is None:
            raise VmmError(f"Firecracker answered GET {resource} with something not a JSON object")
        return value

    def _call(self, method: str, resource: str, body: dict[str, Any] | None) -> bytes:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:  # a GET must carry no body at all, not even `null`
            payload = json.dumps(_without_none(body)).encode()
            headers["Content-Type"] = "application/json"
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            conn.request(method, resource, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise VmmError(
                f"Firecracker API {method} {resource} failed: {exc or type(exc).__name__}",
                hint="the VMM has probably exited; check the VM's console log",
                socket=str(self.socket_path),
            ) from exc
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            fault = _fault_message(raw)
            raise VmmError(
                f"Firecracker rejected {method} {resource} ({response.status}): {fault}",
                hint="the VM's configuration or files are not usable by Firecracker",
                status=response.status,
                fault_message=fault,
            )
        return raw
