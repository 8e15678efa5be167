"""Where pyro-mcp keeps its state and its cache, the knobs that move them, and how a file
there is replaced safely."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

APP = "pyro-mcp"
CACHE_ENV = "PYRO_CACHE_DIR"
STATE_ENV = "PYRO_STATE_DIR"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def cache_dir() -> Path:
    """Root of the artefact cache (environments, snapshots, runtime binaries)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return _xdg("XDG_CACHE_HOME", ".cache") / APP


def state_dir() -> Path:
    """Root of the state (SQLite store, one directory per VM or workspace)."""
    override = os.environ.get(STATE_ENV)
    if override:
        return Path(override).expanduser()
    return _xdg("XDG_STATE_HOME", ".local/state") / APP


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make the leaf 0700: it may hold sockets and secrets."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A new file, written through the handle, that replaces `path` only once the block
    completes: a crash or an error leaves the old file or the new one, never half.
    `mode` is filtered by the umask, as for any new file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (see atomic_file)."""
    with atomic_file(path) as handle:
        handle.write(data)
