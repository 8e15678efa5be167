"""Build an environment from Debian packages into the store: kernel, initramfs, root image.

The kernel bundle (vmlinux plus the busybox-and-modules part of the initramfs) is shared by
every environment and built once. The kernel download and the root build run side by side:
both mostly wait on mmdebstrap.
"""

from __future__ import annotations

import platform
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pyro_mcp.environments import catalog, debian, initramfs, kernel, rootfs
from pyro_mcp.environments.store import MANIFEST_SCHEMA, EnvironmentStore, now_iso
from pyro_mcp.errors import BuildError, IntegrityError
from pyro_mcp.host import tools
from pyro_mcp.version import __version__

PHASES = ("kernel", "rootfs", "image", "initramfs", "install")


class Progress(Protocol):
    def phase(self, name: str, message: str) -> None: ...


class _Silent:
    def phase(self, name: str, message: str) -> None:
        return None


def _kernel_version(tree: Path) -> str:
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    if not images:
        raise BuildError(f"the kernel package unpacked no vmlinuz into {tree / 'boot'}")
    return images[-1].name.removeprefix("vmlinuz-")


def build_kernel_bundle(store: EnvironmentStore, staging: Path) -> dict[str, Any]:
    """Fetch the kernel and busybox, store vmlinux and the base initramfs, record them."""
    tree = staging / "kernel-tree"
    debian.fetch_kernel_tree(tree, staging / "kernel.log")
    version = _kernel_version(tree)
    vmlinux = staging / "vmlinux"
    kernel.extract_vmlinux(tree / "boot" / f"vmlinuz-{version}", vmlinux)
    index = kernel.index_modules(tree / "lib" / "modules" / version / "kernel")
    modules = kernel.module_load_order(index, kernel.GUEST_MODULES)
    base = staging / "initramfs-base.cpio"
    base.write_bytes(initramfs.base_archive(tree / "bin" / "busybox", modules))
    record = {
        "kernel_version": version,
        "vmlinux": store.blobs.add(vmlinux)[0],
        "initramfs_base": store.blobs.add(base)[0],
        "modules": [m.name for m in modules],
        "built_at": now_iso(),
    }
    store.write_kernel_record(record)
    return record


def usable_kernel_bundle(store: EnvironmentStore) -> dict[str, Any] | None:
    record = store.kernel_record()
    if record is None:
        return None
    try:
        store.blobs.verify(str(record["vmlinux"]))
        store.blobs.verify(str(record["initramfs_base"]))
    except (IntegrityError, KeyError):
        return None
    return record


def build_initramfs(store: EnvironmentStore, bundle: dict[str, Any], staging: Path) -> str:
    """Base archive + this package's init and agent, stored; returns the digest."""
    base = store.blobs.verify(str(bundle["initramfs_base"])).read_bytes()
    out = staging / "initramfs.cpio"
    out.write_bytes(base + initramfs.pyro_archive())
    return store.blobs.add(out)[0]


def build_root(
    env: catalog.Environment, store: EnvironmentStore, staging: Path, progress: Progress
) -> tuple[str, list[str]]:
    tree = staging / "root-tree"
    packages = [*catalog.BASE_PACKAGES, *env.packages]
    progress.phase("rootfs", f"installing {', '.join(packages)} from Debian {catalog.SUITE}")
    debian.build_root_tree(tree, packages, staging / "rootfs.log")
    installed = debian.installed_packages(tree)
    progress.phase("image", "writing the read-only ext4 root image")
    image = staging / "rootfs.ext4"
    rootfs.make_image(tree, image)
    return store.blobs.add(image)[0], installed


def _artifact(store: EnvironmentStore, digest: str, file: str) -> dict[str, Any]:
    return {"sha256": digest, "size": store.blobs.size(digest), "file": file}


def build_environment(
    env: catalog.Environment,
    store: EnvironmentStore,
    staging: Path,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build every artefact of `env` in `staging`, move them into the store, write the manifest."""
    progress = progress or _Silent()
    tools.require(*tools.IMAGE_BUILD_TOOLS)
    bundle = usable_kernel_bundle(store)
    with ThreadPoolExecutor(max_workers=2) as pool:
        kernel_job = None
        if bundle is None:
            progress.phase("kernel", f"fetching {catalog.KERNEL_PACKAGE} and busybox-static")
            kernel_job = pool.submit(build_kernel_bundle, store, staging)
        root_digest, installed = build_root(env, store, staging, progress)
        if kernel_job is not None:
            bundle = kernel_job.result()
    assert bundle is not None
    progress.phase("initramfs", "adding the guest init and agent to the initramfs")
    initramfs_digest = build_initramfs(store, bundle, staging)
    return write_manifest(env, store, bundle, initramfs_digest, root_digest, installed, progress)


def write_manifest(
    env: catalog.Environment,
    store: EnvironmentStore,
    bundle: dict[str, Any],
    initramfs_digest: str,
    root_digest: str,
    installed: list[str],
    progress: Progress,
) -> dict[str, Any]:
    progress.phase("install", f"recording {env.name} in the cache")
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "name": env.name,
        "version": env.version,
        "catalog_version": catalog.CATALOG_VERSION,
        "platform": catalog.PLATFORM,
        "distribution": catalog.DISTRIBUTION,
        "suite": catalog.SUITE,
        "kernel_version": bundle["kernel_version"],
        "guest_digest": initramfs.guest_digest(),
        "packages": installed,
        "built_at": now_iso(),
        "builder": {
            "pyro_mcp": __version__,
            "mmdebstrap": debian.mmdebstrap_version(),
            "host": platform.node(),
        },
        "artifacts": {
            "kernel": _artifact(store, str(bundle["vmlinux"]), "vmlinux"),
            "initramfs": _artifact(store, initramfs_digest, "initramfs.cpio"),
            "rootfs": _artifact(store, root_digest, "rootfs.ext4"),
        },
    }
    store.write_manifest(env, manifest)
    return manifest


def refresh_guest(
    env: catalog.Environment,
    store: EnvironmentStore,
    manifest: dict[str, Any],
    staging: Path,
    progress: Progress | None = None,
) -> dict[str, Any] | None:
    """Rebuild only the initramfs when the agent changed; None when a full build is needed."""
    bundle = usable_kernel_bundle(store)
    if bundle is None or bundle["vmlinux"] != manifest["artifacts"]["kernel"]["sha256"]:
        return None
    progress = progress or _Silent()
    progress.phase("initramfs", "the guest agent changed: rebuilding the initramfs only")
    digest = build_initramfs(store, bundle, staging)
    root = str(manifest["artifacts"]["rootfs"]["sha256"])
    return write_manifest(
        env, store, bundle, digest, root, list(manifest.get("packages", [])), progress
    )
