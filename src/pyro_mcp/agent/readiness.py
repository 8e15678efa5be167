"""pyro guest agent, service readiness: the four checks, each bounded by the time left.

- file: a path inside /workspace exists.
- tcp: HOST:PORT accepts a connection (at most 1 s per try).
- http: the URL answers with a 2xx or 3xx status, as pyro-mcp 3.11 defined it (redirects are
  not followed; at most 2 s per try; no proxy).
- command: ``sh -lc COMMAND`` in the service's cwd and environment exits 0 (at most 10 s per
  try; its whole session is killed afterwards, background jobs included).

stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from typing import Any

from pyro_mcp.agent import sessions
from pyro_mcp.agent.commands import _has_exited, _open_pidfd
from pyro_mcp.protocol import file_ops
from pyro_mcp.protocol.service_ops import Readiness

TCP_TRY = 1.0
HTTP_TRY = 2.0
COMMAND_TRY = 10.0
_NO_PIDFD_POLL = 0.02


def check_ready(
    readiness: Readiness | None, root: str, cwd: str, env: dict[str, str], left: float
) -> bool:
    """One try of `readiness`, taking at most `left` seconds."""
    if readiness is None:
        return True
    if readiness.type == "file":
        parts = file_ops.workspace_parts(readiness.value, "readiness path")
        return os.path.exists(os.path.join(root, *parts))
    if readiness.type == "tcp":
        return _tcp(readiness.value, min(left, TCP_TRY))
    if readiness.type == "http":
        return _http(readiness.value, min(left, HTTP_TRY))
    return _command(readiness.value, cwd, env, min(left, COMMAND_TRY))


def _tcp(address: str, timeout: float) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer: the server is up (following it could lead anywhere)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _http(url: str, timeout: float) -> bool:
    try:
        with _OPENER.open(url, timeout=timeout) as answer:
            return 200 <= int(answer.status) < 400
    except urllib.error.HTTPError as exc:  # 3xx (not followed), 4xx, 5xx
        return 200 <= exc.code < 400
    except (OSError, ValueError, http.client.HTTPException):
        return False


def _command(command: str, cwd: str, env: dict[str, str], timeout: float) -> bool:
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-lc", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except OSError:
        return False
    exited = _wait_unreaped(proc.pid, timeout)
    if not exited:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # unreaped: the group id is still its
    # Background jobs of the check go too, while its session id is still the leader's.
    sessions.kill_survivors(proc.pid)
    return proc.wait() == 0 and exited


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` s for child `pid` to exit, leaving it unreaped; True if it did."""
    pidfd = _open_pidfd(pid)
    if pidfd is None:
        poll = _NO_PIDFD_POLL
        waited = 0.0
        while not _has_exited(pid) and waited < timeout:
            select.select([], [], [], poll)
            waited += poll
        return _has_exited(pid)
    try:
        select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    return _has_exited(pid)
