"""list / inspect / pull / prune of environments, with the public contract's result keys."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_mcp.environments import catalog, initramfs
from pyro_mcp.environments.store import EnvironmentStore, remove_staging
from pyro_mcp.errors import IntegrityError

if TYPE_CHECKING:
    from pyro_mcp.environments.build import Progress

SOURCE = f"debian:{catalog.SUITE} packages via mmdebstrap"


@dataclass(frozen=True)
class InstalledEnvironment:
    """What a VM needs to boot `environment`: verified artefact paths and the manifest."""

    environment: catalog.Environment
    manifest: dict[str, Any]
    kernel: Path
    initramfs: Path
    rootfs: Path


class EnvironmentService:
    def __init__(self, store: EnvironmentStore | None = None) -> None:
        self.store = store or EnvironmentStore()

    def info(self, env: catalog.Environment) -> dict[str, Any]:
        manifest = self.store.manifest(env)
        installed = manifest is not None and self.store.is_installed(env)
        info: dict[str, Any] = {
            "name": env.name,
            "version": env.version,
            "description": env.description,
            "default_packages": list(env.default_packages),
            "distribution": catalog.DISTRIBUTION,
            "distribution_version": catalog.DISTRIBUTION_VERSION,
            "platform": catalog.PLATFORM,
            # The contract's OCI fields: environments are built locally, never pulled from OCI.
            "oci_registry": None,
            "oci_repository": None,
            "oci_reference": None,
            "source": SOURCE,
            "source_digest": manifest["artifacts"]["rootfs"]["sha256"] if manifest else None,
            "compatibility": f">={catalog.CATALOG_VERSION}",
            "catalog_version": catalog.CATALOG_VERSION,
            "installed": installed,
            "cache_dir": str(self.store.root),
            "install_dir": str(self.store.install_dir(env)),
        }
        if installed and manifest is not None:
            info["install_manifest"] = manifest
        return info

    def list(self) -> list[dict[str, Any]]:
        return [self.info(env) for env in catalog.CATALOG]

    def inspect(self, name: str) -> dict[str, Any]:
        return self.info(catalog.get(name))

    def pull(self, name: str, progress: Progress | None = None) -> dict[str, Any]:
        """Make `name` installed and verified, building what is missing; idempotent."""
        env = catalog.get(name)
        started = time.monotonic()
        built = self._ensure(env, progress)
        result = self.info(env)
        paths = self.store.artifact_paths(self.store.manifest(env) or {})
        result.update(
            kernel_image=str(paths["kernel"]),
            initramfs_image=str(paths["initramfs"]),
            rootfs_image=str(paths["rootfs"]),
            built=built,
            duration_ms=round((time.monotonic() - started) * 1000),
        )
        return result

    def ensure(self, name: str, progress: Progress | None = None) -> InstalledEnvironment:
        """The verified artefacts of `name`, building the environment on first use."""
        env = catalog.get(name)
        manifest = self.store.manifest(env)
        if manifest is None or not self._current(manifest):
            self._ensure(env, progress)
            manifest = self.store.manifest(env)
        assert manifest is not None
        try:
            found = self.store.verify_artifacts(manifest)
        except IntegrityError:
            self._ensure(env, progress)
            manifest = self.store.manifest(env)
            assert manifest is not None
            found = self.store.verify_artifacts(manifest)
        return InstalledEnvironment(
            env, manifest, found["kernel"], found["initramfs"], found["rootfs"]
        )

    def prune(self) -> dict[str, Any]:
        """Drop staging debris, stale installs and blobs nothing references."""
        with self.store.locked():
            staging = self.store.clear_staging()
            stale = self.store.stale_install_dirs()
            for path in stale:
                remove_staging(path)
            blobs = self.store.collect_garbage()
        deleted = [str(p) for p in [*staging, *stale]]
        return {"deleted_environment_dirs": deleted, "count": len(deleted), "deleted_blobs": blobs}

    # --- internals ------------------------------------------------------------------------

    def _current(self, manifest: dict[str, Any]) -> bool:
        return manifest.get("guest_digest") == initramfs.guest_digest()

    def _ensure(self, env: catalog.Environment, progress: Progress | None) -> bool:
        """Install `env` under the cache lock; True when anything had to be built."""
        with self.store.locked():
            self.store.clear_staging()
            manifest = self.store.manifest(env)
            if manifest is not None and self._current(manifest) and self._verifies(manifest):
                return False
            from pyro_mcp.environments import build  # only a build needs the builder

            staging = self.store.new_staging()
            try:
                rebuilt = None
                if manifest is not None and self._root_verifies(manifest):
                    rebuilt = build.refresh_guest(env, self.store, manifest, staging, progress)
                if rebuilt is None:
                    build.build_environment(env, self.store, staging, progress)
            finally:
                remove_staging(staging)
                # Also after a failure: blobs it stored before failing are named by nothing.
                self.store.collect_garbage()
        return True

    def _verifies(self, manifest: dict[str, Any]) -> bool:
        try:
            self.store.verify_artifacts(manifest)
        except IntegrityError:
            return False
        return True

    def _root_verifies(self, manifest: dict[str, Any]) -> bool:
        try:
            self.store.blobs.verify(str(manifest["artifacts"]["rootfs"]["sha256"]))
        except IntegrityError:
            return False
        return True
