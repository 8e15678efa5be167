"""pyro guest agent, secrets: the workspace's secrets in a tmpfs, mapped into the processes
that ask for them, and the redactor that every output of this guest goes through.

``secrets.put`` (input: protocol.redaction.encode_secret_set's JSON) replaces the whole set:
a new directory (0700) of one file per secret (0600, root's) is written beside
/run/pyro-secrets and renamed over it, so a reader sees the old set or the new one. /run is a
tmpfs (init mounts it), so the values never reach the workspace's disk, and the host sends
them again after every boot, restore, start or reset. An empty set clears it (before a memory
snapshot that another workspace could restore, say).

Per call, exec, shell.open and service.start name ``secret_env {SECRET: ENV}``: the agent
takes the values from here (they are never sent per call) into that one process's
environment. Every exec output, shell ring and service log is redacted with redactor(),
whether or not the call asked for secrets: any root process can read this directory.
stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pyro_mcp.protocol import ops
from pyro_mcp.protocol import redaction as rd

if TYPE_CHECKING:  # only for annotations: server.py imports this module
    from pyro_mcp.agent.server import Call
    from pyro_mcp.agent.system import AgentConfig

Params = dict[str, Any]
SECRETS_DIR = "/run/pyro-secrets"


def secrets_dir(config: AgentConfig) -> str:
    """/run/pyro-secrets in the guest; beside the workspace in a sandboxed (test) agent."""
    if config.system_calls:
        return SECRETS_DIR
    return os.path.join(os.path.dirname(config.workspace_root), "run", "pyro-secrets")


def _write_private(path: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class SecretStore:
    """The installed set (in the tmpfs directory, and in this process for quick access)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._values: dict[str, bytes] = {}
        self._redactor = rd.Redactor([])
        self._reload()
        _LOG_FILTER.stores.add(self)

    def _reload(self) -> None:
        """An agent restarted by init finds the set its earlier run installed."""
        values: dict[str, bytes] = {}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.directory):
                with contextlib.suppress(rd.SecretError, OSError):
                    rd.check_secret_name(name)
                    with open(os.path.join(self.directory, name), "rb") as handle:
                        values[name] = handle.read(rd.MAX_SECRET_BYTES + 1)
        self._set(values)

    def _set(self, values: Mapping[str, bytes]) -> None:
        redactor = rd.Redactor(values.values())
        with self._lock:
            self._values, self._redactor = dict(values), redactor

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._values)

    def put(self, values: Mapping[str, bytes]) -> None:
        """Replace the set (atomically, by renaming a complete new directory over it)."""
        parent = os.path.dirname(self.directory)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        token = uuid.uuid4().hex[:8]
        fresh = os.path.join(parent, f".pyro-secrets.{token}.new")
        old = os.path.join(parent, f".pyro-secrets.{token}.old")
        os.mkdir(fresh, 0o700)
        try:
            os.chmod(fresh, 0o700)
            for name, value in values.items():
                _write_private(os.path.join(fresh, name), value)
            with self._lock:  # one replacement at a time
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.directory, old)
                os.rename(fresh, self.directory)
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        self._set(values)

    def env_for(self, secret_env: Mapping[str, str]) -> dict[str, str]:
        """{ENV: value} for a call's secret_env; unknown or NUL-holding secrets refused."""
        with self._lock:
            values = dict(self._values)
        env: dict[str, str] = {}
        for secret, name in secret_env.items():
            if secret not in values:
                raise ops.ParamError(f"secret_env references unknown workspace secret {secret!r}")
            text = values[secret].decode("utf-8", "replace")
            if "\0" in text:
                raise ops.ParamError(
                    f"secret {secret} holds a NUL byte, which an environment variable cannot"
                )
            env[name] = text
        return env

    def redactor(self) -> rd.Redactor:
        """A fresh redactor (one per output stream) over the set installed now."""
        with self._lock:
            return self._redactor.clone()

    def operations(self) -> dict[str, Callable[[Call, Params], Params]]:
        return {"secrets.put": self._put_op}

    def _put_op(self, call: Call, params: Params) -> Params:
        ops.check_keys(params, ())
        body = bytearray()
        while chunk := call.read_input():
            body += chunk
            if len(body) > rd.MAX_SET_BODY:
                raise ops.ParamError(f"the secret set is larger than {rd.MAX_SET_BODY} bytes")
        try:
            values = rd.parse_secret_set(bytes(body))
        except rd.SecretError as exc:
            raise ops.ParamError(str(exc)) from None
        self.put(values)
        return {"names": sorted(values)}


class _LogRedaction(logging.Filter):
    """The agent's own log (the VM's console, which the host keeps) never shows a secret:
    an error message may quote a path or a line that holds one."""

    def __init__(self) -> None:
        super().__init__()
        self.stores: weakref.WeakSet[SecretStore] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        redactors = [r for store in list(self.stores) if (r := store.redactor()).active]
        if redactors:
            text = record.getMessage()
            for redactor in redactors:
                text = redactor.redact_text(text)
            record.msg, record.args = text, None
        return True


_LOG_FILTER = _LogRedaction()
logging.getLogger("pyro-agent").addFilter(_LOG_FILTER)
