"""pyro guest agent, shells: the shell.* operations on interactive shells kept by the agent.

A shell belongs to the agent, not to the connection that opened it: it lives until it is
closed or the VM ends (pty_shell.py runs each one). A closed shell is forgotten, so later calls
on it answer unknown_shell. stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyro_mcp.agent.files import Tree
from pyro_mcp.agent.pty_shell import Shell
from pyro_mcp.protocol import file_ops as pf
from pyro_mcp.protocol import frames, ops
from pyro_mcp.protocol import shell_ops as so

if TYPE_CHECKING:  # only for annotations: server.py imports this module
    from pyro_mcp.agent.guest_secrets import SecretStore
    from pyro_mcp.agent.server import Call

Params = dict[str, Any]
Parts = tuple[str, ...]
OpError = frames.OpError


class Shells:
    """Every shell of this agent, and the shell.* operations on them."""

    def __init__(
        self, tree: Tree, limit: int = so.MAX_SHELLS, secrets: SecretStore | None = None
    ) -> None:
        self._tree, self._limit, self._secrets = tree, limit, secrets
        self._lock = threading.Lock()
        self._shells: dict[str, Shell] = {}
        self._opening = 0

    def operations(self) -> dict[str, Callable[[Call, Params], Params]]:
        return {
            "shell.open": self._open,
            "shell.read": self._read,
            "shell.write": self._write,
            "shell.signal": self._signal,
            "shell.resize": self._resize,
            "shell.close": self._close,
            "shell.list": self._list,
        }

    def close_all(self) -> None:
        """End every shell (the agent is stopping)."""
        with self._lock:
            shells, self._shells = list(self._shells.values()), {}
        for shell in shells:
            shell.close()

    def _get(self, shell_id: str) -> Shell:
        with self._lock:
            shell = self._shells.get(shell_id)
        if shell is None:
            raise OpError(so.ERR_UNKNOWN_SHELL, f"shell {shell_id} does not exist")
        return shell

    def _real_cwd(self, parts: Parts) -> str:
        """The directory `parts` names, reached without a link leading out of the root."""
        real = self._tree.resolve(parts, follow_final=True)
        with self._tree.open_dir(real):
            pass  # exists and is a directory all the way down
        return os.path.join(self._tree.root, *real)

    def _open(self, call: Call, params: Params) -> Params:
        spec = so.parse_open(params)
        store = self._secrets
        extra_env: dict[str, str] = {}
        if spec.secret_env:
            if store is None:
                raise ops.ParamError("this agent keeps no secrets")
            extra_env = store.env_for(spec.secret_env)
        redactor = store.redactor() if store is not None else None
        real_cwd = self._real_cwd(spec.parts)
        with self._lock:
            if len(self._shells) + self._opening >= self._limit:
                raise OpError(
                    so.ERR_TOO_MANY_SHELLS,
                    f"this workspace already has {self._limit} shells (exited ones count "
                    "until closed); close one before opening another",
                )
            self._opening += 1
        try:
            shell_id = secrets.token_hex(6)
            shell = Shell(
                shell_id,
                pf.logical(spec.parts),
                spec.cols,
                spec.rows,
                real_cwd,
                env=extra_env,
                redactor=redactor,
            )
            with self._lock:
                self._shells[shell_id] = shell
        finally:
            with self._lock:
                self._opening -= 1
        return shell.view()

    def _read(self, call: Call, params: Params) -> Params:
        spec = so.parse_read(params)
        result, text = self._get(spec.shell_id).read(spec, call)
        data = text.encode("utf-8")
        for start in range(0, len(data), frames.MAX_BODY_BYTES):
            call.send_output(frames.DATA, data[start : start + frames.MAX_BODY_BYTES])
        return result

    def _write(self, call: Call, params: Params) -> Params:
        spec = so.parse_write(params)
        shell = self._get(spec.shell_id)
        data = spec.input.encode("utf-8") + (b"\n" if spec.append_newline else b"")
        shell.write(data)
        return {**shell.view(), "input_bytes": len(data)}

    def _signal(self, call: Call, params: Params) -> Params:
        shell_id, name = so.parse_signal(params)
        shell = self._get(shell_id)
        shell.send_signal(name)
        return {**shell.view(), "signal": name}

    def _resize(self, call: Call, params: Params) -> Params:
        shell_id, cols, rows = so.parse_resize(params)
        shell = self._get(shell_id)
        shell.resize(cols, rows)
        return shell.view()

    def _close(self, call: Call, params: Params) -> Params:
        shell_id = so.parse_shell_id(params)
        with self._lock:
            shell = self._shells.pop(shell_id, None)
        if shell is None:
            raise OpError(so.ERR_UNKNOWN_SHELL, f"shell {shell_id} does not exist")
        shell.close()
        return {**shell.view(), "closed": True}

    def _list(self, call: Call, params: Params) -> Params:
        ops.check_keys(params, ())
        with self._lock:
            shells = list(self._shells.values())
        return {"shells": [shell.view() for shell in shells]}
