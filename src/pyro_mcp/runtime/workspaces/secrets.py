"""Workspace secrets on the host: parsed and checked at create time, kept where reset and start
need them, gone with the workspace.

Where they live: ``<workspace dir>/secrets/`` (0700, inside the workspace's own 0700
directory), one file per secret named after it (0600, the raw UTF-8 value), plus
``kinds.json`` (0600) mapping each name to its source_kind. Nothing of them is in the state
database; views show ``{name, source_kind}`` only. Why here and not somewhere "better":

- reset and start run in whatever process the next CLI, SDK or MCP call is, possibly after a
  host reboot, so the values must persist, readable by the workspace's owner only; the
  workspace directory is exactly that scope, and delete/expiry already remove it whole;
- the kernel keyring (no stdlib API, lost at reboot) and the supervisor's memory (it dies with
  each stop) do not outlive a stop/start;
- they never go to /tmp (contract defect S4) and never onto a command line or an environment
  (readable in /proc): the guest receives them in a request body over the agent channel.

The set is written once, atomically: a temporary sibling directory renamed into place, so a
failed create leaves either no secrets directory or a complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pyro_mcp.agent_client.secrets import install_secrets
from pyro_mcp.errors import InvalidArgumentError, PyroError
from pyro_mcp.protocol import redaction
from pyro_mcp.protocol.redaction import Redactor, SecretError
from pyro_mcp.runtime import launch

SECRETS_DIR = "secrets"
KINDS_FILE = "kinds.json"
SOURCE_KINDS = ("literal", "file")


@dataclass(frozen=True)
class Secret:
    """One checked secret; its value never shows in a repr."""

    name: str
    source_kind: str
    value: bytes = field(repr=False)

    def view(self) -> dict[str, str]:
        return {"name": self.name, "source_kind": self.source_kind}


def _invalid(exc: SecretError) -> InvalidArgumentError:
    return InvalidArgumentError(str(exc), hint="see `pyro workspace create --help` for secrets")


def _read_file(name: str, file_path: Any) -> bytes:
    """A secret file's content: a regular file of at most MAX_SECRET_BYTES."""
    if not isinstance(file_path, (str, os.PathLike)) or not str(file_path):
        raise InvalidArgumentError(f"secret {name}: file_path must be a path string")
    path = Path(os.fspath(file_path)).expanduser()
    try:
        # O_NONBLOCK: opening a FIFO must not hang; the type is checked on the open handle.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InvalidArgumentError(f"secret {name}: {path} is not a regular file")
            data = handle.read(redaction.MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise InvalidArgumentError(
            f"secret {name}: cannot read {path}: {exc.strerror or exc}"
        ) from None
    return data


def parse(secrets: Iterable[Any] | None) -> list[Secret]:
    """The create-time secrets (`{"name", "value"}` or `{"name", "file_path"}` each), checked:
    names, sizes, UTF-8, no duplicates; file contents read here. Errors never hold a value."""
    if secrets is None:
        return []
    if isinstance(secrets, (str, bytes, Mapping)):
        raise InvalidArgumentError(
            'secrets must be a list of {"name", "value"} or {"name", "file_path"} objects'
        )
    found: list[Secret] = []
    seen: set[str] = set()
    for entry in secrets:
        if not isinstance(entry, Mapping):
            raise InvalidArgumentError(
                'each secret must be an object: {"name", "value"} or {"name", "file_path"}'
            )
        unknown = sorted(str(k) for k in set(entry) - {"name", "value", "file_path"})
        if unknown:
            raise InvalidArgumentError(f"unknown secret field(s): {', '.join(unknown)}")
        try:
            name = redaction.check_secret_name(entry.get("name"))
        except SecretError as exc:
            raise _invalid(exc) from None
        if name in seen:
            raise InvalidArgumentError(f"secret {name} is defined twice")
        seen.add(name)
        if ("value" in entry) == ("file_path" in entry):
            raise InvalidArgumentError(f"secret {name} needs exactly one of value and file_path")
        if "value" in entry:
            kind, raw = "literal", entry["value"]
            if isinstance(raw, (bytes, bytearray)):
                raise InvalidArgumentError(f"secret {name} must have a string value")
        else:
            kind, raw = "file", _read_file(name, entry["file_path"])
        try:
            value = redaction.check_secret_value(name, raw)
        except SecretError as exc:
            raise _invalid(exc) from None
        found.append(Secret(name, kind, value))
    if len(found) > redaction.MAX_SECRETS:
        raise InvalidArgumentError(f"a workspace takes at most {redaction.MAX_SECRETS} secrets")
    return found


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # whatever the umask


def store(workspace_dir: Path, secrets: Iterable[Secret]) -> None:
    """Write the set into ``workspace_dir/secrets`` (which must not exist yet)."""
    secrets = list(secrets)
    target = workspace_dir / SECRETS_DIR
    tmp = workspace_dir / f".{SECRETS_DIR}.{uuid.uuid4().hex[:8]}.tmp"
    os.mkdir(tmp, 0o700)
    try:
        os.chmod(tmp, 0o700)
        for secret in secrets:
            _write_private(tmp / secret.name, secret.value)
        kinds = {s.name: s.source_kind for s in secrets}
        _write_private(tmp / KINDS_FILE, json.dumps(kinds, sort_keys=True).encode())
        os.rename(tmp, target)  # fails if target exists: a set is written once
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _kinds(workspace_dir: Path) -> dict[str, str]:
    try:
        raw = (workspace_dir / SECRETS_DIR / KINDS_FILE).read_bytes()
    except FileNotFoundError:
        return {}
    kinds = json.loads(raw)
    if not isinstance(kinds, dict):
        raise ValueError(f"{workspace_dir / SECRETS_DIR / KINDS_FILE} is corrupt")
    return {str(k): str(v) for k, v in kinds.items()}


def views(workspace_dir: Path) -> list[dict[str, str]]:
    """``[{name, source_kind}]`` sorted by name; no values are read."""
    return [{"name": n, "source_kind": k} for n, k in sorted(_kinds(workspace_dir).items())]


def names(workspace_dir: Path) -> list[str]:
    return sorted(_kinds(workspace_dir))


def load(workspace_dir: Path) -> dict[str, bytes]:
    """name -> value of every stored secret (empty when the workspace has none)."""
    folder = workspace_dir / SECRETS_DIR
    return {name: (folder / name).read_bytes() for name in names(workspace_dir)}


def remove(workspace_dir: Path) -> None:
    """Delete the stored set (the workspace's own deletion removes it anyway)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(workspace_dir / SECRETS_DIR)


def redactor(workspace_dir: Path) -> Redactor:
    """A fresh Redactor over every stored secret's value (inactive when there are none)."""
    return Redactor(load(workspace_dir).values())


def check_secret_env(secret_env: Any, known: Iterable[str]) -> dict[str, str]:
    """{SECRET: ENV} checked against the workspace's secrets, as InvalidArgumentError."""
    try:
        return redaction.check_secret_env(secret_env, known)
    except SecretError as exc:
        raise InvalidArgumentError(str(exc)) from None


def parse_secret_env_flags(flags: Iterable[str]) -> dict[str, str]:
    """CLI ``--secret-env SECRET[=ENV]`` values; the env name defaults to the secret's."""
    mapping: dict[str, str] = {}
    for flag in flags:
        secret, _, env = flag.partition("=")
        try:
            mapping[redaction.check_secret_name(secret)] = redaction.check_secret_name(
                env or secret
            )
        except SecretError as exc:
            raise _invalid(exc) from None
    return mapping


def install(workspace_dir: Path, vm_dir: Path) -> None:
    """Send the workspace's set to the guest of the VM in `vm_dir` (after every boot, restore,
    start or reset: the guest keeps them in a tmpfs, which no snapshot of ours carries over)."""
    values = load(workspace_dir)
    if values:
        with launch.connect(vm_dir) as client:
            install_secrets(client, values)


class RedactorCache:
    """One Redactor per workspace, built once: a set never changes after create. Keyed by the
    set's kinds file identity, so a workspace id reused after delete gets its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[int, int], Redactor]] = {}

    def get(self, workspace_dir: Path) -> Redactor:
        try:
            info = os.stat(workspace_dir / SECRETS_DIR / KINDS_FILE)
        except OSError:
            return _NONE
        key = (info.st_ino, info.st_mtime_ns)
        with self._lock:
            hit = self._cache.get(workspace_dir)
        if hit is not None and hit[0] == key:
            return hit[1]
        built = redactor(workspace_dir)
        with self._lock:
            self._cache[workspace_dir] = (key, built)
        return built


_NONE = Redactor([])


def redact_tree[T](value: T, redactor: Redactor) -> T:
    """`value` (a result: dicts, lists, strings, numbers) with every string redacted."""
    if not redactor.active:
        return value
    return cast(T, _redact_any(value, redactor))


def _redact_any(value: Any, redactor: Redactor) -> Any:
    if isinstance(value, str):
        return redactor.redact_text(value)
    if isinstance(value, dict):
        return {key: _redact_any(item, redactor) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_any(item, redactor) for item in value]
    return value


def redact_error(exc: BaseException, redactor: Redactor) -> None:
    """Scrub an exception about to leave pyro in place: its message, hint, details and args.
    The chain goes too (a guest's or an OS error's text may repeat the secret)."""
    if not redactor.active:
        return
    if isinstance(exc, PyroError):
        exc.message = redactor.redact_text(exc.message)
        exc.hint = None if exc.hint is None else redactor.redact_text(exc.hint)
        exc.details = redact_tree(exc.details, redactor)
    exc.args = tuple(redact_tree(arg, redactor) for arg in exc.args)
    exc.__cause__ = exc.__context__ = None
    exc.__suppress_context__ = True
