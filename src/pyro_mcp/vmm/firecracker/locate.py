"""Locate the Firecracker binary (and its jailer) and ask it for its version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyro_mcp import paths
from pyro_mcp.errors import HostRequirementError, VmmError

DEFAULT_VERSION = "1.12.1"
BIN_ENV = "PYRO_FIRECRACKER_BIN"
JAILER_ENV = "PYRO_JAILER_BIN"
VERSION_TIMEOUT_S = 5.0
_VERSION_OUTPUT_RE = re.compile(r"Firecracker v(\d+\.\d+\.\d+)")


@dataclass(frozen=True)
class FirecrackerBinary:
    """A usable Firecracker binary, its jailer if one was found, and where it came from."""

    path: Path
    jailer: Path | None
    source: str

    def version(self) -> str:
        """The version this binary reports, e.g. "1.12.1"."""
        return firecracker_version(self.path)


def default_install_root() -> Path:
    """The directory holding one `<version>/` directory per installed release."""
    return paths.cache_dir() / "runtime" / "firecracker"


def find_firecracker(version: str = DEFAULT_VERSION) -> FirecrackerBinary | None:
    """Resolve Firecracker from $PYRO_FIRECRACKER_BIN, then the cache install, then PATH."""
    override = os.environ.get(BIN_ENV)
    if override:
        path = _require_executable(Path(override).expanduser(), BIN_ENV)
        return FirecrackerBinary(path, _find_jailer(path), "env")
    cached = default_install_root() / version / "firecracker"
    if is_executable(cached):
        return FirecrackerBinary(cached, _find_jailer(cached), "cache")
    on_path = shutil.which("firecracker")
    if on_path:
        path = Path(on_path)
        return FirecrackerBinary(path, _find_jailer(path), "path")
    return None


def is_executable(path: Path) -> bool:
    """A regular file (or a link to one) that we may execute."""
    return path.is_file() and os.access(path, os.X_OK)


def _find_jailer(firecracker: Path) -> Path | None:
    # An explicit variable beats whatever happens to sit beside the binary.
    override = os.environ.get(JAILER_ENV)
    if override:
        return _require_executable(Path(override).expanduser(), JAILER_ENV)
    beside = firecracker.parent / "jailer"
    if is_executable(beside):
        return beside
    on_path = shutil.which("jailer")
    return Path(on_path) if on_path else None


def _require_executable(path: Path, variable: str) -> Path:
    if not is_executable(path):
        raise HostRequirementError(
            f"{variable} names {path}, which is not an executable file",
            hint=f"point {variable} at an existing executable, or unset it",
            variable=variable,
            path=str(path),
        )
    return path


def firecracker_version(path: Path | str) -> str:
    """Run `<path> --version` and return the version it reports, e.g. "1.12.1"."""
    try:
        argv = [str(path), "--version"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=VERSION_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise VmmError(
            f"{path} --version did not answer within {VERSION_TIMEOUT_S:g} s",
            hint="check that the file is really a Firecracker binary",
            path=str(path),
        ) from exc
    except OSError as exc:
        raise HostRequirementError(
            f"cannot run {path}: {exc.strerror or exc}",
            hint=f"install Firecracker (pyro can fetch it) or point {BIN_ENV} at a binary",
            path=str(path),
        ) from exc
    match = _VERSION_OUTPUT_RE.search(done.stdout)
    if done.returncode != 0 or match is None:
        output = (done.stdout + done.stderr).strip()[:200]
        raise VmmError(
            f"{path} --version exited {done.returncode} without a Firecracker version "
            f"(output: {output!r})",
            hint="check that the file is really a Firecracker binary",
            path=str(path),
        )
    return match.group(1)
