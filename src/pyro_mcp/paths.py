"""Where pyro-mcp keeps its state and its cache, the knobs that move them, and how a file
there is replaced safely."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

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


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
