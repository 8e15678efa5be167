"""The environment cache layout: manifests, atomic records, the lock, staging and pruning."""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.environments import catalog
from pyro_mcp.environments.store import (
    ARTIFACTS,
    MANIFEST_SCHEMA,
    EnvironmentStore,
    is_digest,
    write_json_atomic,
)
from pyro_mcp.errors import IntegrityError

DEBIAN12 = catalog.get("debian:12")
BASE = catalog.get("debian:12-base")


@pytest.fixture
def store(tmp_path: Path) -> EnvironmentStore:
    return EnvironmentStore(tmp_path / "environments")


def add_blob(store: EnvironmentStore, data: bytes) -> str:
    source = store.root / f"incoming-{hashlib.sha256(data).hexdigest()[:8]}"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(data)
    return store.blobs.add(source)[0]


def install_fake(
    store: EnvironmentStore, env: catalog.Environment, tag: str = ""
) -> dict[str, Any]:
    """Store three small blobs for `env` and write a manifest naming them."""
    artifacts = {}
    for name in ARTIFACTS:
        digest = add_blob(store, f"{env.name} {name} {tag}".encode())
        artifacts[name] = {"sha256": digest, "size": store.blobs.size(digest), "file": name}
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "name": env.name,
        "version": env.version,
        "packages": [],
        "artifacts": artifacts,
    }
    store.write_manifest(env, manifest)
    return manifest


def digests(manifest: dict[str, Any]) -> set[str]:
    return {str(manifest["artifacts"][n]["sha256"]) for n in ARTIFACTS}


# --- layout and manifests ----------------------------------------------------------------


def test_default_root_follows_the_cache_dir(tmp_path: Path) -> None:
    # conftest points PYRO_CACHE_DIR at tmp_path / "pyro-cache".
    assert EnvironmentStore().root == tmp_path / "pyro-cache" / "environments"


def test_layout(store: EnvironmentStore) -> None:
    assert store.install_dir(DEBIAN12) == store.root / "installed" / "debian_12-1.0.0"
    assert store.manifest_path(DEBIAN12) == store.install_dir(DEBIAN12) / "manifest.json"
    assert store.kernel_record_path == store.root / "kernel.json"
    assert store.blobs.dir == store.root / "blobs" / "sha256"


def test_a_valid_manifest_is_read_back(store: EnvironmentStore) -> None:
    manifest = install_fake(store, DEBIAN12)
    assert store.manifest(DEBIAN12) == manifest
    assert store.is_installed(DEBIAN12)
    assert store.manifest(BASE) is None
    assert not store.is_installed(BASE)


def _break(manifest: dict[str, Any], how: str) -> Any:
    broken = copy.deepcopy(manifest)
    if how == "schema":
        broken["schema"] = MANIFEST_SCHEMA + 1
    elif how == "no-schema":
        del broken["schema"]
    elif how == "name":
        broken["name"] = "debian:12-base"
    elif how == "version":
        broken["version"] = "0.9.0"
    elif how == "missing-artifact":
        del broken["artifacts"]["rootfs"]
    elif how == "extra-artifact":
        broken["artifacts"]["firmware"] = broken["artifacts"]["kernel"]
    elif how == "artifacts-not-a-dict":
        broken["artifacts"] = list(broken["artifacts"].values())
    elif how == "artifact-not-a-dict":
        broken["artifacts"]["kernel"] = broken["artifacts"]["kernel"]["sha256"]
    elif how == "no-digest":
        del broken["artifacts"]["initramfs"]["sha256"]
    elif how == "path-as-digest":
        broken["artifacts"]["kernel"]["sha256"] = "../../../../etc/passwd"
    elif how == "upper-case-digest":
        broken["artifacts"]["kernel"]["sha256"] = broken["artifacts"]["kernel"]["sha256"].upper()
    elif how == "not-an-object":
        broken = [broken]
    return broken


@pytest.mark.parametrize(
    "how",
    [
        "schema",
        "no-schema",
        "name",
        "version",
        "missing-artifact",
        "extra-artifact",
        "artifacts-not-a-dict",
        "artifact-not-a-dict",
        "no-digest",
        "path-as-digest",
        "upper-case-digest",
        "not-an-object",
    ],
)
def test_manifest_validation_rejects(store: EnvironmentStore, how: str) -> None:
    manifest = install_fake(store, DEBIAN12)
    store.manifest_path(DEBIAN12).write_text(json.dumps(_break(manifest, how)))
    assert store.manifest(DEBIAN12) is None
    assert not store.is_installed(DEBIAN12)


def test_an_unparsable_or_empty_manifest_is_no_manifest(store: EnvironmentStore) -> None:
    install_fake(store, DEBIAN12)
    for text in ("{not json", ""):
        store.manifest_path(DEBIAN12).write_text(text)
        assert store.manifest(DEBIAN12) is None


def test_is_installed_needs_every_blob(store: EnvironmentStore) -> None:
    manifest = install_fake(store, DEBIAN12)
    store.blobs.discard(manifest["artifacts"]["initramfs"]["sha256"])
    assert store.manifest(DEBIAN12) is not None
    assert not store.is_installed(DEBIAN12)


def test_is_digest() -> None:
    assert is_digest("a" * 64)
    assert not is_digest("a" * 63)
    assert not is_digest("A" * 64)
    assert not is_digest("g" * 64)
    assert not is_digest(None)
    assert not is_digest(["a" * 64])


def test_kernel_record_round_trip_and_validation(store: EnvironmentStore) -> None:
    assert store.kernel_record() is None
    record = {"vmlinux": "1" * 64, "initramfs_base": "2" * 64, "kernel_version": "6.1"}
    store.write_kernel_record(record)
    assert store.kernel_record() == record
    store.write_kernel_record({**record, "vmlinux": "../vmlinux"})
    assert store.kernel_record() is None
    store.write_kernel_record({"kernel_version": "6.1"})
    assert store.kernel_record() is None


def test_verify_artifacts_names_the_bad_artifact(store: EnvironmentStore) -> None:
    manifest = install_fake(store, DEBIAN12)
    found = store.verify_artifacts(manifest)
    assert found == store.artifact_paths(manifest)
    assert set(found) == set(ARTIFACTS)
    rootfs = found["rootfs"]
    os.chmod(rootfs, 0o644)
    rootfs.write_bytes(b"tampered")
    with pytest.raises(IntegrityError) as caught:
        store.verify_artifacts(manifest)
    assert caught.value.details["artifact"] == "rootfs"
    assert caught.value.details["digest"] == manifest["artifacts"]["rootfs"]["sha256"]


# --- atomic JSON ---------------------------------------------------------------------------


def test_write_json_atomic_writes_sorted_json_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "dir" / "record.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert target.read_text().index('"a"') < target.read_text().index('"b"')
    write_json_atomic(target, {"c": 3})
    assert json.loads(target.read_text()) == {"c": 3}
    assert os.listdir(target.parent) == ["record.json"]


def test_a_failed_json_write_keeps_the_old_file_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    write_json_atomic(target, {"old": True})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"new": object()})
    assert json.loads(target.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["record.json"]


# --- lock ----------------------------------------------------------------------------------


def _try_lock(path: Path) -> bool:
    """Whether another open file description could take the lock right now."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def test_locked_is_exclusive_while_held(store: EnvironmentStore) -> None:
    lock = store.root / ".lock"
    with store.locked():
        assert lock.is_file()
        assert not _try_lock(lock)
    assert _try_lock(lock)


def test_locked_is_released_on_error(store: EnvironmentStore) -> None:
    with pytest.raises(RuntimeError), store.locked():
        raise RuntimeError("boom")
    assert _try_lock(store.root / ".lock")


# --- staging, garbage, stale installs ---------------------------------------------------------


def test_new_staging_directories_are_distinct(store: EnvironmentStore) -> None:
    first, second = store.new_staging(), store.new_staging()
    assert first != second
    assert first.is_dir() and second.is_dir()
    assert first.parent == store.root / "staging"
    assert first.name.startswith(f"{os.getpid()}-")


def test_clear_staging_removes_debris(store: EnvironmentStore) -> None:
    assert store.clear_staging() == []
    debris = store.new_staging()
    (debris / "root-tree" / "usr" / "bin").mkdir(parents=True)
    (debris / "root-tree" / "usr" / "bin" / "tool").write_bytes(b"x")
    os.chmod(debris / "root-tree" / "usr" / "bin" / "tool", 0o444)
    stray = store.root / "staging" / "stray-file"
    stray.write_text("half written")
    removed = store.clear_staging()
    assert sorted(removed) == sorted([debris, stray])
    assert list((store.root / "staging").iterdir()) == []


def test_collect_garbage_keeps_referenced_blobs(store: EnvironmentStore) -> None:
    first = install_fake(store, DEBIAN12)
    second = install_fake(store, BASE)
    kernel = add_blob(store, b"shared vmlinux")
    base = add_blob(store, b"shared initramfs base")
    store.write_kernel_record({"vmlinux": kernel, "initramfs_base": base})
    orphan = add_blob(store, b"an old rootfs")
    stamp = store.blobs.root / "stamps" / orphan
    assert stamp.is_file()
    assert store.referenced_blobs() == digests(first) | digests(second) | {kernel, base}
    assert store.collect_garbage() == [orphan]
    assert set(store.blobs.digests()) == digests(first) | digests(second) | {kernel, base}
    assert not stamp.exists()
    assert store.collect_garbage() == []


def test_collect_garbage_drops_blobs_of_a_broken_manifest(store: EnvironmentStore) -> None:
    manifest = install_fake(store, DEBIAN12)
    store.manifest_path(DEBIAN12).write_text("{")
    assert sorted(store.collect_garbage()) == sorted(digests(manifest))
    assert store.blobs.digests() == []


def test_stale_install_dirs(store: EnvironmentStore) -> None:
    assert store.stale_install_dirs() == []
    install_fake(store, DEBIAN12)
    broken = install_fake(store, BASE)
    store.blobs.discard(broken["artifacts"]["kernel"]["sha256"])
    installed = store.root / "installed"
    unknown = installed / "ubuntu_24.04-1.0.0"
    unknown.mkdir()
    (unknown / "manifest.json").write_text("{}")
    old_version = installed / "debian_12-0.9.0"
    old_version.mkdir()
    garbled = catalog.get("debian:12-build")
    store.install_dir(garbled).mkdir()
    store.manifest_path(garbled).write_text("not json")
    stale = store.stale_install_dirs()
    assert stale == sorted(
        [store.install_dir(BASE), unknown, old_version, store.install_dir(garbled)]
    )
    assert store.install_dir(DEBIAN12) not in stale
