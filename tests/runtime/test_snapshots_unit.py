"""The snapshot cache without booting anything: the key, lookup's verdicts, ensure's bookkeeping.

`make_template` (the cold boot of a template VM) is replaced here by a function that writes
files; the real one runs in test_warm_start_integration.py.
"""

from __future__ import annotations

import json
import os
import platform
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pyro_mcp.environments import catalog
from pyro_mcp.environments.service import InstalledEnvironment
from pyro_mcp.errors import PyroTimeoutError
from pyro_mcp.host import tools
from pyro_mcp.protocol import frames
from pyro_mcp.runtime import snapshots
from pyro_mcp.runtime.backends import BackendChoice
from pyro_mcp.runtime.snapshots import SnapshotCache, key_digest, snapshot_key
from pyro_mcp.vmm import boot_args as boot_args_module
from pyro_mcp.vmm.base import Snapshot

ENV = catalog.CATALOG[0]
OTHER_ENV = catalog.CATALOG[1]
QEMU_TCG = BackendChoice("qemu", "tcg", "test")


def installed(env: catalog.Environment = ENV, **digests: str) -> InstalledEnvironment:
    artifacts = {
        name: {"sha256": digests.get(name, f"{name}-digest")}
        for name in ("kernel", "initramfs", "rootfs")
    }
    root = Path("/nonexistent")
    return InstalledEnvironment(
        env, {"artifacts": artifacts}, root / "kernel", root / "initramfs", root / "rootfs"
    )


# --- the key -------------------------------------------------------------------------------


def base_key() -> dict[str, Any]:
    return snapshot_key(installed(), QEMU_TCG, 1, 1024, 0)


# Each entry changes one thing a snapshot depends on; together they must touch every field.
VARIATIONS: dict[str, Callable[[pytest.MonkeyPatch], dict[str, Any]]] = {
    "environment": lambda mp: snapshot_key(installed(OTHER_ENV), QEMU_TCG, 1, 1024, 0),
    "kernel": lambda mp: snapshot_key(installed(kernel="k2"), QEMU_TCG, 1, 1024, 0),
    "initramfs": lambda mp: snapshot_key(installed(initramfs="i2"), QEMU_TCG, 1, 1024, 0),
    "rootfs": lambda mp: snapshot_key(installed(rootfs="r2"), QEMU_TCG, 1, 1024, 0),
    "backend": lambda mp: snapshot_key(
        installed(), BackendChoice("firecracker", "tcg", "test"), 1, 1024, 0
    ),
    "accel": lambda mp: snapshot_key(installed(), BackendChoice("qemu", "kvm", "t"), 1, 1024, 0),
    "vcpu_count": lambda mp: snapshot_key(installed(), QEMU_TCG, 2, 1024, 0),
    "mem_mib": lambda mp: snapshot_key(installed(), QEMU_TCG, 1, 2048, 0),
    "disk_mib": lambda mp: snapshot_key(installed(), QEMU_TCG, 1, 1024, 512),
    "network": lambda mp: snapshot_key(installed(), QEMU_TCG, 1, 1024, 0, network=True),
}


def _patched(target: Any, name: str, value: Any) -> Callable[[pytest.MonkeyPatch], dict[str, Any]]:
    def vary(mp: pytest.MonkeyPatch) -> dict[str, Any]:
        mp.setattr(target, name, value)
        return base_key()

    return vary


VARIATIONS |= {
    "schema": _patched(snapshots, "SCHEMA", snapshots.SCHEMA + 1),
    "agent_version": _patched(frames, "AGENT_VERSION", frames.AGENT_VERSION + "+next"),
    "host_cpu": _patched(snapshots, "_cpu_model", lambda: "Another CPU @ 1.00GHz"),
    "host_kernel": _patched(platform, "release", lambda: "0.0.0-other"),
    # The guest's TSC rate is part of the command line a TCG template booted with.
    "boot_args": _patched(boot_args_module, "host_tsc_khz", lambda: 1234567),
    # A snapshot's device state is only readable by the VMM build that wrote it.
    "vmm_build": _patched(snapshots, "_vmm_build", lambda choice: "qemu:other-build"),
}


def test_the_key_is_a_json_object_with_a_short_stable_digest() -> None:
    key = base_key()
    assert json.loads(json.dumps(key)) == key
    digest = key_digest(key)
    assert len(digest) == 32 and int(digest, 16) >= 0
    assert key_digest(dict(reversed(list(key.items())))) == digest  # order does not matter
    assert base_key() == key  # nothing random or time-dependent in it


@pytest.mark.parametrize("field", sorted(VARIATIONS))
def test_changing_what_a_snapshot_depends_on_changes_the_key(
    field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = base_key()
    after = VARIATIONS[field](monkeypatch)
    changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
    assert field in changed, f"{field} did not change the key: {after}"
    assert key_digest(after) != key_digest(before)


def test_every_field_of_the_key_is_covered_by_a_variation() -> None:
    assert set(VARIATIONS) == set(base_key())


def test_the_vmm_build_names_the_qemu_binary_by_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "qemu-system-x86_64"
    binary.write_bytes(b"build one")
    monkeypatch.setattr(tools, "QEMU", SimpleNamespace(path=lambda: str(binary)))
    first = snapshots._vmm_build(QEMU_TCG)
    assert first == snapshots._vmm_build(QEMU_TCG)
    binary.write_bytes(b"build number two")  # an upgrade: another size and mtime
    assert snapshots._vmm_build(QEMU_TCG) != first
    monkeypatch.setattr(tools, "QEMU", SimpleNamespace(path=lambda: None))
    assert snapshots._vmm_build(QEMU_TCG) == "?"


# --- lookup --------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path) -> SnapshotCache:
    return SnapshotCache(tmp_path / "snapshots")


KEY = {"schema": 1, "environment": "debian:12", "mem_mib": 1024}


def add_blob(cache: SnapshotCache, tmp_path: Path, data: bytes, name: str) -> dict[str, Any]:
    source = tmp_path / name
    source.write_bytes(data)
    digest, size = cache.blobs.add(source)
    return {"sha256": digest, "size": size}


def write_snapshot(
    cache: SnapshotCache, tmp_path: Path, key: dict[str, Any] = KEY, *, disk: bool = False
) -> dict[str, Any]:
    manifest = {
        "key": key,
        "memory": add_blob(cache, tmp_path, b"guest ram" * 1000, "memory.ram"),
        "state": add_blob(cache, tmp_path, b"device state", "device.state"),
        "disk": add_blob(cache, tmp_path, b"disk image", "disk.ext4") if disk else None,
        "created_at": "2026-01-01T00:00:00Z",
        "template_boot_ms": 1,
    }
    path = cache.manifest_path(key_digest(key))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return manifest


def flip_byte(path: Path, offset: int = 0) -> None:
    os.chmod(path, 0o644)
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_lookup_of_a_good_snapshot_returns_its_verified_blobs(
    cache: SnapshotCache, tmp_path: Path
) -> None:
    manifest = write_snapshot(cache, tmp_path)
    found = cache.lookup(KEY)
    assert found == Snapshot(
        cache.blobs.path(manifest["memory"]["sha256"]),
        cache.blobs.path(manifest["state"]["sha256"]),
        None,
    )
    assert found is not None and found.memory.read_bytes() == b"guest ram" * 1000


def test_lookup_returns_the_disk_of_a_snapshot_that_has_one(
    cache: SnapshotCache, tmp_path: Path
) -> None:
    manifest = write_snapshot(cache, tmp_path, disk=True)
    found = cache.lookup(KEY)
    assert found is not None and found.disk == cache.blobs.path(manifest["disk"]["sha256"])


def test_lookup_without_a_manifest_is_none(cache: SnapshotCache) -> None:
    assert cache.lookup(KEY) is None
    assert not cache.root.exists()  # looking creates nothing


@pytest.mark.parametrize(
    "text",
    ["", "{not json", '{"key": ', "null", "[]", '"a string"', "42", "\x00\x01\x02"],
)
def test_lookup_of_a_garbled_manifest_is_none(
    cache: SnapshotCache, tmp_path: Path, text: str
) -> None:
    write_snapshot(cache, tmp_path)
    cache.manifest_path(key_digest(KEY)).write_text(text)
    assert cache.lookup(KEY) is None


def test_lookup_of_a_manifest_for_another_key_discards_it(
    cache: SnapshotCache, tmp_path: Path
) -> None:
    write_snapshot(cache, tmp_path)
    path = cache.manifest_path(key_digest(KEY))
    manifest = json.loads(path.read_text())
    manifest["key"] = {**KEY, "mem_mib": 2048}  # written under the wrong name
    path.write_text(json.dumps(manifest))
    assert cache.lookup(KEY) is None
    assert not path.parent.exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: m.pop("state"),
        lambda m: m.pop("disk"),
        lambda m: m.update(memory=None),
        lambda m: m.update(memory="sha256"),
        lambda m: m["state"].pop("sha256"),
        lambda m: m["state"].update(sha256="0" * 64),  # a blob that is not there
    ],
    ids=["no-state", "no-disk-entry", "memory-null", "memory-string", "no-digest", "no-blob"],
)
def test_lookup_of_an_incomplete_manifest_discards_it(
    cache: SnapshotCache, tmp_path: Path, damage: Callable[[dict[str, Any]], Any]
) -> None:
    write_snapshot(cache, tmp_path)
    path = cache.manifest_path(key_digest(KEY))
    manifest = json.loads(path.read_text())
    damage(manifest)
    path.write_text(json.dumps(manifest))
    assert cache.lookup(KEY) is None
    assert not path.parent.exists()


@pytest.mark.parametrize("artefact", ["memory", "state", "disk"])
def test_lookup_of_a_snapshot_with_a_corrupt_blob_discards_it(
    cache: SnapshotCache, tmp_path: Path, artefact: str
) -> None:
    manifest = write_snapshot(cache, tmp_path, disk=True)
    flip_byte(cache.blobs.path(manifest[artefact]["sha256"]), 3)
    assert cache.lookup(KEY) is None
    assert not cache.manifest_path(key_digest(KEY)).exists()


def test_lookup_of_a_removed_blob_discards_the_snapshot(
    cache: SnapshotCache, tmp_path: Path
) -> None:
    manifest = write_snapshot(cache, tmp_path)
    cache.blobs.path(manifest["memory"]["sha256"]).unlink()
    assert cache.lookup(KEY) is None
    assert not cache.manifest_path(key_digest(KEY)).exists()


# --- ensure --------------------------------------------------------------------------------


class FakeTemplates:
    """Stands in for the template VM: writes the files make_template returns."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, Path]] = []
        self.lock = threading.Lock()

    def __call__(
        self, key: dict[str, Any], env: Any, backend: Any, work: Path, staging: Path
    ) -> tuple[Path, Path, Path | None, int]:
        with self.lock:
            self.calls.append((work, staging))
            n = len(self.calls)
        assert work.is_dir() and staging.is_dir()
        assert stat.S_IMODE(work.stat().st_mode) == 0o700
        memory, state = staging / "memory.ram", staging / "device.state"
        with memory.open("wb") as handle:  # mostly holes, like guest RAM
            handle.truncate(int(key.get("mem_mib", 1)) << 20)
            handle.seek(4096)
            handle.write(b"ram of template %d" % n)
        state.write_bytes(b"state of template %d" % n)
        disk = None
        if key.get("disk_mib"):
            disk = staging / "disk.ext4"
            disk.write_bytes(b"disk of template %d" % n)
        return memory, state, disk, 1234


@pytest.fixture
def templates(monkeypatch: pytest.MonkeyPatch) -> FakeTemplates:
    fake = FakeTemplates()
    monkeypatch.setattr(snapshots, "make_template", fake)
    return fake


def test_ensure_makes_a_snapshot_once_and_then_reuses_it(
    cache: SnapshotCache, tmp_path: Path, templates: FakeTemplates
) -> None:
    key = {**KEY, "mem_mib": 4, "disk_mib": 8}
    vm_root = tmp_path / "state" / "vms"
    made = cache.ensure(key, installed(), object(), vm_root)  # type: ignore[arg-type]
    assert len(templates.calls) == 1
    manifest = json.loads(cache.manifest_path(key_digest(key)).read_text())
    assert manifest["key"] == key and manifest["template_boot_ms"] == 1234
    assert manifest["memory"]["size"] == 4 << 20
    assert made == Snapshot(
        cache.blobs.path(manifest["memory"]["sha256"]),
        cache.blobs.path(manifest["state"]["sha256"]),
        cache.blobs.path(manifest["disk"]["sha256"]),
    )
    for path in (made.memory, made.state, made.disk):
        assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o444
    work, staging = templates.calls[0]
    assert not work.exists() and not staging.exists()  # the template's files are gone
    assert work.parent == vm_root and len(work.name) <= 12  # short: its sockets must fit

    again = cache.ensure(key, installed(), object(), vm_root)  # type: ignore[arg-type]
    assert again == made and len(templates.calls) == 1


def test_ensure_rebuilds_a_corrupt_snapshot(
    cache: SnapshotCache, tmp_path: Path, templates: FakeTemplates
) -> None:
    first = cache.ensure(KEY, installed(), object(), tmp_path / "vms")  # type: ignore[arg-type]
    flip_byte(first.memory, 4096)
    second = cache.ensure(KEY, installed(), object(), tmp_path / "vms")  # type: ignore[arg-type]
    assert len(templates.calls) == 2
    assert second.memory != first.memory
    assert cache.lookup(KEY) == second


def test_concurrent_ensures_make_one_template(
    cache: SnapshotCache, tmp_path: Path, templates: FakeTemplates
) -> None:
    results: list[Snapshot] = []
    errors: list[BaseException] = []

    def ensure() -> None:
        try:
            results.append(cache.ensure(KEY, installed(), object(), tmp_path / "vms"))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ensure) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(templates.calls) == 1
    assert len(results) == 4 and len(set(results)) == 1


def test_a_failed_template_leaves_no_snapshot_and_no_files(
    cache: SnapshotCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Path] = []

    def failing(key: Any, env: Any, backend: Any, work: Path, staging: Path) -> Any:
        seen.extend([work, staging])
        (staging / "memory.ram").write_bytes(b"half")
        raise PyroTimeoutError("the template did not boot")

    monkeypatch.setattr(snapshots, "make_template", failing)
    with pytest.raises(PyroTimeoutError):
        cache.ensure(KEY, installed(), object(), tmp_path / "vms")  # type: ignore[arg-type]
    assert seen and not any(path.exists() for path in seen)
    assert cache.lookup(KEY) is None
    assert cache.blobs.digests() == []
