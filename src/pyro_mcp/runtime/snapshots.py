"""Warm-start snapshots: one per (environment build, backend, vcpu, memory, agent), made on
first need by cold-booting a template to agent-ready, verified by digest before every use.

    <cache>/snapshots/<key>/manifest.json    what the snapshot is and its artefact digests
    <cache>/snapshots/blobs/sha256/<hex>     guest RAM and device state, content-addressed
    <cache>/snapshots/<key>.lock             held while the snapshot is made
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyro_mcp import paths
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.environments.blobs import BlobStore, remove_tree, sparse_sha256
from pyro_mcp.environments.service import InstalledEnvironment
from pyro_mcp.environments.store import now_iso, write_json_atomic
from pyro_mcp.errors import IntegrityError, PyroError
from pyro_mcp.host import tools
from pyro_mcp.network import addressing, netns
from pyro_mcp.network.vm import guest_nic
from pyro_mcp.protocol import frames
from pyro_mcp.runtime.backends import BackendChoice
from pyro_mcp.vmm.base import Backend, GuestNic, Snapshot, VmSpec
from pyro_mcp.vmm.boot_args import boot_args
from pyro_mcp.vmm.disks import make_disk

SCHEMA = 1
TEMPLATE_BOOT_TIMEOUT = {"tcg": 180.0, "kvm": 60.0}


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "?"


def _vmm_build(choice: BackendChoice) -> str:
    """Names the VMM binary a restore would run: its device state is only readable by the
    build that wrote it, so an upgraded VMM needs a new snapshot (not a failed restore)."""
    try:
        if choice.name == "firecracker":
            from pyro_mcp.vmm.firecracker.locate import find_firecracker

            found = find_firecracker()
            path = str(found.path) if found is not None else None
        else:
            path = tools.QEMU.path()
        if path is None:
            return "?"
        st = os.stat(path)
    except (OSError, PyroError):
        return "?"
    return f"{Path(path).name}:{st.st_size}-{st.st_mtime_ns}"


def snapshot_key(
    env: InstalledEnvironment,
    choice: BackendChoice,
    vcpu_count: int,
    mem_mib: int,
    disk_mib: int = 0,
    *,
    network: bool = False,
) -> dict[str, Any]:
    """Everything a snapshot depends on; any change means a different snapshot."""
    artifacts = env.manifest["artifacts"]
    return {
        "schema": SCHEMA,
        "environment": env.environment.name,
        "kernel": artifacts["kernel"]["sha256"],
        "initramfs": artifacts["initramfs"]["sha256"],
        "rootfs": artifacts["rootfs"]["sha256"],
        "backend": choice.name,
        "accel": choice.accel,
        "vcpu_count": vcpu_count,
        "mem_mib": mem_mib,
        "disk_mib": disk_mib,
        "network": network,
        "agent_version": frames.AGENT_VERSION,
        "boot_args": boot_args(choice.accel),
        "host_cpu": _cpu_model(),
        "host_kernel": platform.release(),
        "vmm_build": _vmm_build(choice),
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


class SnapshotCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or paths.cache_dir() / "snapshots"
        self.blobs = BlobStore(self.root / "blobs", digest=sparse_sha256)

    def manifest_path(self, digest: str) -> Path:
        return self.root / digest / "manifest.json"

    @contextlib.contextmanager
    def _locked(self, digest: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / f"{digest}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def discard(self, snapshot: Snapshot) -> None:
        """Forget a snapshot that verified but would not restore; the next start remakes it."""
        if not self.root.is_dir():
            return
        for manifest_path in self.root.glob("*/manifest.json"):
            try:
                memory = json.loads(manifest_path.read_text())["memory"]["sha256"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if memory == snapshot.memory.name:
                remove_tree(manifest_path.parent)

    def lookup(self, key: dict[str, Any]) -> Snapshot | None:
        """The verified snapshot for `key`; a corrupt or stale one is discarded."""
        digest = key_digest(key)
        try:
            manifest = json.loads(self.manifest_path(digest).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("key") != key:
            remove_tree(self.root / digest)
            return None
        try:
            memory = self.blobs.verify(str(manifest["memory"]["sha256"]))
            state = self.blobs.verify(str(manifest["state"]["sha256"]))
            disk = self.blobs.verify(str(manifest["disk"]["sha256"])) if manifest["disk"] else None
        except (IntegrityError, KeyError, TypeError):
            remove_tree(self.root / digest)
            return None
        return Snapshot(memory=memory, state=state, disk=disk)

    def ensure(
        self, key: dict[str, Any], env: InstalledEnvironment, backend: Backend, vm_root: Path
    ) -> Snapshot:
        """The snapshot for `key`, made now (under a lock) if there is none yet."""
        found = self.lookup(key)
        if found is not None:
            return found
        digest = key_digest(key)
        with self._locked(digest):
            found = self.lookup(key)  # another process may have made it meanwhile
            if found is not None:
                return found
            return self._create(key, digest, env, backend, vm_root)

    def _create(
        self,
        key: dict[str, Any],
        digest: str,
        env: InstalledEnvironment,
        backend: Backend,
        vm_root: Path,
    ) -> Snapshot:
        # As short as a VM directory name: its sockets must fit in sun_path (108 bytes).
        work = paths.ensure_private_dir(vm_root / f"t-{digest[:10]}")
        staging = paths.ensure_private_dir(self.root / "staging" / digest)
        try:
            memory, state, disk, boot_ms = make_template(key, env, backend, work, staging)
            memory_digest, memory_size = self.blobs.add(memory)
            state_digest, state_size = self.blobs.add(state)
            disk_entry: dict[str, Any] | None = None
            if disk is not None:
                disk_digest, disk_size = self.blobs.add(disk)
                disk_entry = {"sha256": disk_digest, "size": disk_size}
            manifest = {
                "key": key,
                "memory": {"sha256": memory_digest, "size": memory_size},
                "state": {"sha256": state_digest, "size": state_size},
                "disk": disk_entry,
                "created_at": now_iso(),
                "template_boot_ms": boot_ms,
            }
            write_json_atomic(self.manifest_path(digest), manifest)
        finally:
            remove_tree(work)
            remove_tree(staging)
        disk_path = self.blobs.path(disk_entry["sha256"]) if disk_entry else None
        return Snapshot(self.blobs.path(memory_digest), self.blobs.path(state_digest), disk_path)


def is_current(key: dict[str, Any], artifacts: set[tuple[str, str, str]]) -> bool:
    """Whether a snapshot key still matches an installed environment and this pyro build."""
    built_from = (key.get("kernel"), key.get("initramfs"), key.get("rootfs"))
    return (
        key.get("schema") == SCHEMA
        and built_from in artifacts
        and key.get("agent_version") == frames.AGENT_VERSION
        and key.get("boot_args") == boot_args(str(key.get("accel")))
        and key.get("host_kernel") == platform.release()
    )


def prune(cache: SnapshotCache, artifacts: set[tuple[str, str, str]]) -> list[str]:
    """Remove snapshots nothing can use any more, then their unreferenced blobs."""
    removed, keep = [], set()
    entries = sorted(cache.root.iterdir()) if cache.root.is_dir() else []
    for entry in entries:
        if entry.name in ("blobs", "staging") or not entry.is_dir():
            continue
        try:
            manifest = json.loads((entry / "manifest.json").read_text())
            current = is_current(manifest["key"], artifacts)
        except (OSError, ValueError, KeyError, TypeError):
            manifest, current = {}, False
        if not current:
            remove_tree(entry)
            (cache.root / f"{entry.name}.lock").unlink(missing_ok=True)
            removed.append(entry.name)
            continue
        keep |= {manifest[k]["sha256"] for k in ("memory", "state", "disk") if manifest.get(k)}
    for digest in cache.blobs.digests():
        if digest not in keep:
            cache.blobs.discard(digest)
    remove_tree(cache.root / "staging")
    return removed


def make_template(
    key: dict[str, Any],
    env: InstalledEnvironment,
    backend: Backend,
    work: Path,
    staging: Path,
) -> tuple[Path, Path, Path | None, int]:
    """Cold-boot a template to agent-ready, warm it; returns (RAM, state, disk, boot ms)."""
    disk = None
    if key["disk_mib"]:
        disk = staging / "disk.ext4"
        make_disk(disk, int(key["disk_mib"]))
    spec = VmSpec(
        "template", work, env.kernel, env.initramfs, env.rootfs,
        int(key["vcpu_count"]), int(key["mem_mib"]), "pyro-template", rw_disk=disk,
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        if key.get("network"):
            spec = replace(spec, nic=template_nic(stack, backend))
        return _boot_and_save(key, spec, backend, staging)


def template_nic(stack: contextlib.ExitStack, backend: Backend) -> GuestNic:
    """The NIC every VM restored from a networked snapshot has: a TAP of its own namespace,
    which the template never sends anything through."""
    persistent = backend.name == "firecracker"
    ns = stack.enter_context(netns.throwaway_namespace())
    with netns.entered(ns):
        tap = netns.open_tap(addressing.TAP_NAME, persist=persistent)
    stack.callback(os.close, tap)
    return guest_nic(tap, ns)


def _boot_and_save(
    key: dict[str, Any], spec: VmSpec, backend: Backend, staging: Path
) -> tuple[Path, Path, Path | None, int]:
    memory, state = staging / "memory.ram", staging / "device.state"
    started = time.monotonic()
    proc = backend.launch_template(spec, spec.vm_dir / "console.log", memory)
    try:
        timeout = TEMPLATE_BOOT_TIMEOUT[str(key["accel"])]
        with GuestClient(backend.connect_agent(spec, timeout)) as client:
            client.hello(timeout=timeout)
            # Pull the binaries a first command needs into the guest's page cache.
            client.exec(["true"], timeout=30)
            client.exec(command="true", timeout=30)
        boot_ms = round((time.monotonic() - started) * 1000)
        # Let the agent see the host leave, so restored copies start between sessions.
        time.sleep(0.1)
        backend.save_snapshot(spec, state)
    finally:
        proc.kill()
        proc.wait()
    return memory, state, spec.rw_disk, boot_ms
