"""The environment cache on disk: manifests, shared blobs, staging, and the lock that guards them.

    <cache>/environments/
        blobs/sha256/<hex>          every artefact, named by its digest (kernel, initramfs, root)
        kernel.json                 the kernel bundle every environment shares
        installed/<slug>/manifest.json
        staging/<id>/               work in progress; anything here without the lock is debris
        .lock                       flock held by pulls and prunes

An environment is installed exactly when its manifest exists; the manifest is written last,
by rename, so an interrupted pull leaves at most debris that the next pull or prune removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyro_mcp import paths
from pyro_mcp.environments import catalog
from pyro_mcp.environments.blobs import BlobStore, remove_tree
from pyro_mcp.errors import IntegrityError

MANIFEST_SCHEMA = 1
ARTIFACTS = ("kernel", "initramfs", "rootfs")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_digest(value: object) -> bool:
    """A lowercase hex sha256: the only thing a record may name a blob by (no paths)."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    paths.write_atomic(path, json.dumps(payload, indent=2, sort_keys=True).encode())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _unmount_below(path: Path) -> None:
    """Detach any mount left under `path` (a killed mmdebstrap leaves /proc and /sys mounted)."""
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[4] for line in lines if line.split()[4].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove_staging(path: Path) -> None:
    _unmount_below(path)
    remove_tree(path)


class EnvironmentStore:
    """Reads and writes the cache layout above; knows nothing about how artefacts are built."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or paths.cache_dir() / "environments"
        self.blobs = BlobStore(self.root / "blobs")

    # --- layout --------------------------------------------------------------------------

    def install_dir(self, env: catalog.Environment) -> Path:
        return self.root / "installed" / env.slug

    def manifest_path(self, env: catalog.Environment) -> Path:
        return self.install_dir(env) / "manifest.json"

    @property
    def kernel_record_path(self) -> Path:
        return self.root / "kernel.json"

    # --- records ---------------------------------------------------------------------------

    def manifest(self, env: catalog.Environment) -> dict[str, Any] | None:
        data = _read_json(self.manifest_path(env))
        if data is None or data.get("schema") != MANIFEST_SCHEMA:
            return None
        if data.get("name") != env.name or data.get("version") != env.version:
            return None
        artifacts = data.get("artifacts")
        if not isinstance(artifacts, dict) or set(artifacts) != set(ARTIFACTS):
            return None
        if not all(isinstance(a, dict) and is_digest(a.get("sha256")) for a in artifacts.values()):
            return None
        return data

    def kernel_record(self) -> dict[str, Any] | None:
        data = _read_json(self.kernel_record_path)
        if data is None or not (
            is_digest(data.get("vmlinux")) and is_digest(data.get("initramfs_base"))
        ):
            return None
        return data

    def write_manifest(self, env: catalog.Environment, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.manifest_path(env), manifest)

    def write_kernel_record(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.kernel_record_path, record)

    def verify_artifacts(self, manifest: dict[str, Any]) -> dict[str, Path]:
        """Artefact name -> verified path; raises IntegrityError naming the first bad one."""
        found: dict[str, Path] = {}
        for name in ARTIFACTS:
            entry = manifest["artifacts"][name]
            try:
                found[name] = self.blobs.verify(str(entry["sha256"]))
            except IntegrityError as exc:
                exc.details["artifact"] = name
                raise
        return found

    def artifact_paths(self, manifest: dict[str, Any]) -> dict[str, Path]:
        return {n: self.blobs.path(str(manifest["artifacts"][n]["sha256"])) for n in ARTIFACTS}

    def is_installed(self, env: catalog.Environment) -> bool:
        manifest = self.manifest(env)
        return manifest is not None and all(
            p.is_file() for p in self.artifact_paths(manifest).values()
        )

    # --- staging, locking, pruning ----------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the cache; released by the kernel even if this process dies."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def new_staging(self) -> Path:
        path = self.root / "staging" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def clear_staging(self) -> list[Path]:
        """Remove debris of earlier pulls; call only while holding the lock."""
        staging = self.root / "staging"
        removed = sorted(staging.iterdir()) if staging.is_dir() else []
        for path in removed:
            remove_staging(path)
        return removed

    def referenced_blobs(self) -> set[str]:
        refs: set[str] = set()
        for env in catalog.CATALOG:
            manifest = self.manifest(env)
            if manifest is not None:
                refs |= {str(manifest["artifacts"][n]["sha256"]) for n in ARTIFACTS}
        record = self.kernel_record()
        if record is not None:
            refs |= {str(record["vmlinux"]), str(record["initramfs_base"])}
        return refs

    def collect_garbage(self) -> list[str]:
        """Delete blobs nothing references; returns their digests."""
        keep = self.referenced_blobs()
        dropped = [d for d in self.blobs.digests() if d not in keep]
        for digest in dropped:
            self.blobs.discard(digest)
        return dropped

    def stale_install_dirs(self) -> list[Path]:
        """Install directories of unknown environments, old versions, or broken manifests."""
        installed = self.root / "installed"
        if not installed.is_dir():
            return []
        current = {env.slug: env for env in catalog.CATALOG}
        stale = []
        for path in sorted(installed.iterdir()):
            env = current.get(path.name)
            if env is None or self.manifest(env) is None or not self.is_installed(env):
                stale.append(path)
        return stale


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
