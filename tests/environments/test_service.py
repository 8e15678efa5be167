"""pull / ensure / inspect / prune with Debian faked out: everything else is the real pipeline.

The fakes stand in for mmdebstrap and mke2fs only. The kernel bundle is built for real from a
synthetic kernel package (a bzImage with a gzip ELF payload, busybox, `.ko` files), so the
kernel extraction, module order, initramfs assembly, blob store and manifest all run as in a
real pull.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.environments import build, catalog, debian, initramfs, kernel, rootfs
from pyro_mcp.environments.blobs import BlobStore
from pyro_mcp.environments.service import EnvironmentService
from pyro_mcp.environments.store import ARTIFACTS, EnvironmentStore
from pyro_mcp.errors import HostRequirementError, IntegrityError, NotFoundError
from pyro_mcp.host import tools

KERNEL_VERSION = "6.1.0-99-cloud-amd64"
FAKE_ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"fake guest kernel " * 32

INFO_KEYS = {
    "name",
    "version",
    "description",
    "default_packages",
    "distribution",
    "distribution_version",
    "platform",
    "oci_registry",
    "oci_repository",
    "oci_reference",
    "source_digest",
    "compatibility",
    "catalog_version",
    "installed",
    "cache_dir",
    "install_dir",
}
PULL_KEYS = {"install_dir", "kernel_image", "rootfs_image", "source"}


def fake_bzimage() -> bytes:
    payload = gzip.compress(FAKE_ELF, mtime=0)
    setup = bytearray(5 * 512)
    setup[0x1F1] = 4
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 0, len(payload))
    return bytes(setup) + payload


class FakeDebian:
    """Counts what was built; `fail_after_blobs` makes the n-th stored blob raise afterwards."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        self.missing: set[str] = set()
        self.root_flavour = "v1"
        self.fail_after_blobs: int | None = None
        self.failure: BaseException = RuntimeError("injected failure")
        self._blobs_added = 0
        self._lock = threading.Lock()
        real_add = BlobStore.add

        def add(store: BlobStore, source: Path) -> tuple[str, int]:
            result = real_add(store, source)
            with self._lock:
                self._blobs_added += 1
                if self.fail_after_blobs is not None and self._blobs_added >= self.fail_after_blobs:
                    self.fail_after_blobs = None
                    raise self.failure
            return result

        real_which = tools.shutil.which

        def which(command: str, *args: Any, **kwargs: Any) -> str | None:
            if command in self.missing:
                return None
            if command in {"mmdebstrap", "mke2fs", "lz4"}:
                return f"/usr/bin/{command}"
            return real_which(command, *args, **kwargs)

        monkeypatch.setattr(BlobStore, "add", add)
        monkeypatch.setattr(tools.shutil, "which", which)
        monkeypatch.setattr(debian, "fetch_kernel_tree", self.fetch_kernel_tree)
        monkeypatch.setattr(debian, "build_root_tree", self.build_root_tree)
        monkeypatch.setattr(debian, "installed_packages", self.installed_packages)
        monkeypatch.setattr(debian, "mmdebstrap_version", lambda: "1.3.5-fake")
        monkeypatch.setattr(rootfs, "make_image", self.make_image)

    def fetch_kernel_tree(self, target: Path, log: Path) -> None:
        self.calls["kernel"] += 1
        (target / "boot").mkdir(parents=True)
        (target / "boot" / f"vmlinuz-{KERNEL_VERSION}").write_bytes(fake_bzimage())
        (target / "bin").mkdir()
        (target / "bin" / "busybox").write_bytes(b"\x7fELF fake busybox")
        modules = target / "lib" / "modules" / KERNEL_VERSION / "kernel"
        modules.mkdir(parents=True)
        for name in [*kernel.GUEST_MODULES, "virtio_ring"]:
            depends = "virtio_ring" if name.startswith("virtio_") and name != "virtio_ring" else ""
            data = b"\x7fELF\x00\x00license=GPL\x00depends=" + depends.encode() + b"\x00"
            (modules / f"{name}.ko").write_bytes(data)

    def build_root_tree(self, target: Path, packages: list[str], log: Path) -> None:
        self.calls["root"] += 1
        self.packages = packages
        (target / "usr" / "bin").mkdir(parents=True)
        (target / "usr" / "bin" / "python3").write_text(f"python3 {self.root_flavour}")
        (target / "opt" / "pyro").mkdir(parents=True)

    def installed_packages(self, root: Path) -> list[str]:
        return sorted(f"{name}=1.0" for name in self.packages)

    def make_image(self, root: Path, image: Path, label: str = "pyro-root") -> None:
        self.calls["image"] += 1
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        body = (root / "usr" / "bin" / "python3").read_text()
        image.write_text(json.dumps({"label": label, "files": files, "python3": body}))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDebian:
    return FakeDebian(monkeypatch)


@pytest.fixture
def service(tmp_path: Path) -> EnvironmentService:
    return EnvironmentService(EnvironmentStore(tmp_path / "cache" / "environments"))


def blob_path(service: EnvironmentService, name: str, artifact: str) -> Path:
    manifest = service.store.manifest(catalog.get(name))
    assert manifest is not None
    return service.store.blobs.path(manifest["artifacts"][artifact]["sha256"])


def corrupt(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def staging_entries(service: EnvironmentService) -> list[Path]:
    staging = service.store.root / "staging"
    return list(staging.iterdir()) if staging.is_dir() else []


def assert_no_debris(service: EnvironmentService) -> None:
    assert staging_entries(service) == []
    assert set(service.store.blobs.digests()) <= service.store.referenced_blobs()
    for folder in (service.store.root, service.store.root / "installed"):
        if folder.is_dir():
            assert not [p for p in folder.rglob("*.tmp")]


# --- pull --------------------------------------------------------------------------------------


def test_pull_installs_and_reports_the_contract_keys(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    phases: list[str] = []

    class Recorder:
        def phase(self, name: str, message: str) -> None:
            phases.append(name)

    result = service.pull("debian:12", Recorder())
    assert result["built"] is True
    assert result["installed"] is True
    assert INFO_KEYS | PULL_KEYS | {"install_manifest"} <= set(result)
    manifest = result["install_manifest"]
    paths = service.store.verify_artifacts(manifest)
    assert result["kernel_image"] == str(paths["kernel"])
    assert result["initramfs_image"] == str(paths["initramfs"])
    assert result["rootfs_image"] == str(paths["rootfs"])
    assert result["install_dir"] == str(service.store.install_dir(catalog.get("debian:12")))
    assert result["source_digest"] == manifest["artifacts"]["rootfs"]["sha256"]
    assert paths["kernel"].read_bytes() == FAKE_ELF  # really extracted from the bzImage
    assert fake.packages == ["python3", "ca-certificates", "git"]
    assert manifest["packages"] == sorted(["ca-certificates=1.0", "git=1.0", "python3=1.0"])
    assert manifest["kernel_version"] == KERNEL_VERSION
    assert manifest["guest_digest"] == initramfs.guest_digest()
    for name in ARTIFACTS:
        entry = manifest["artifacts"][name]
        assert entry["size"] == paths[name].stat().st_size
    assert set(phases) == set(build.PHASES)
    assert phases.index("rootfs") < phases.index("image") < phases.index("install")
    assert phases[-1] == "install"
    assert_no_debris(service)


def test_the_initramfs_is_base_plus_guest_files(
    service: EnvironmentService, fake: FakeDebian, read_newc: Callable[[bytes], Any]
) -> None:
    result = service.pull("debian:12")
    archive = read_newc(Path(result["initramfs_image"]).read_bytes())
    assert archive.trailers == 2
    names = archive.names()
    assert {
        "bin/busybox",
        "init",
        "pyro/lib/pyro_mcp/agent/server.py",
        "pyro/lib/pyro_mcp/protocol/frames.py",
    } <= set(names)
    order = archive.get("lib/modules/order").data.decode().split()
    assert order[0] == "virtio_ring"
    assert set(order) == {*kernel.GUEST_MODULES, "virtio_ring"}


def test_a_second_pull_builds_nothing(service: EnvironmentService, fake: FakeDebian) -> None:
    first = service.pull("debian:12")
    before = dict(fake.calls)
    second = service.pull("debian:12")
    assert second["built"] is False
    assert dict(fake.calls) == before
    assert second["install_manifest"] == first["install_manifest"]
    assert second["rootfs_image"] == first["rootfs_image"]


def test_environments_share_the_kernel_bundle(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    first = service.pull("debian:12")
    second = service.pull("debian:12-base")
    assert fake.calls["kernel"] == 1
    assert fake.calls["root"] == 2
    assert first["kernel_image"] == second["kernel_image"]
    assert first["initramfs_image"] == second["initramfs_image"]
    assert fake.packages == ["python3", "ca-certificates"]
    # Building the second environment must not collect the first one's blobs.
    service.store.verify_artifacts(first["install_manifest"])


def test_pull_of_an_unknown_name_builds_nothing(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    with pytest.raises(NotFoundError, match="debian:12-build"):
        service.pull("debian:13")
    assert sum(fake.calls.values()) == 0
    assert not service.store.root.exists()


# --- failures leave nothing half-installed -----------------------------------------------------


@pytest.mark.parametrize("after", [1, 2, 3, 4])
def test_a_failure_mid_build_leaves_nothing_half_installed(
    service: EnvironmentService, fake: FakeDebian, after: int
) -> None:
    fake.fail_after_blobs = after
    with pytest.raises(RuntimeError, match="injected failure"):
        service.pull("debian:12")
    env = catalog.get("debian:12")
    assert service.store.manifest(env) is None
    assert not service.store.install_dir(env).exists()
    assert_no_debris(service)
    assert service.inspect("debian:12")["installed"] is False

    result = service.pull("debian:12")
    assert result["built"] is True
    service.store.verify_artifacts(result["install_manifest"])
    assert_no_debris(service)


def test_an_interrupt_mid_build_leaves_nothing_half_installed(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    fake.fail_after_blobs = 1
    fake.failure = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        service.pull("debian:12")
    assert service.store.manifest(catalog.get("debian:12")) is None
    assert_no_debris(service)
    assert service.pull("debian:12")["built"] is True


def test_debris_of_a_killed_pull_is_cleared_by_the_next(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    debris = service.store.new_staging()  # what a SIGKILL'd pull leaves behind
    (debris / "root-tree" / "etc").mkdir(parents=True)
    (debris / "rootfs.ext4").write_bytes(b"half an image")
    result = service.pull("debian:12")
    assert result["built"] is True
    assert not debris.exists()
    assert_no_debris(service)


def test_a_missing_host_tool_is_named_with_its_install_command(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    fake.missing = {"mmdebstrap"}
    with pytest.raises(HostRequirementError) as caught:
        service.pull("debian:12")
    text = str(caught.value)
    assert "`mmdebstrap`" in text
    assert "apt-get install -y mmdebstrap" in text
    assert "mke2fs" not in text
    assert caught.value.details["missing"] == ["mmdebstrap"]
    assert sum(fake.calls.values()) == 0
    assert service.store.manifest(catalog.get("debian:12")) is None
    assert_no_debris(service)


def test_every_missing_host_tool_is_named_at_once(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    fake.missing = {"mmdebstrap", "lz4", "mke2fs"}
    with pytest.raises(HostRequirementError) as caught:
        service.pull("debian:12")
    assert "apt-get install -y e2fsprogs lz4 mmdebstrap" in str(caught.value)


# --- verification and repair -----------------------------------------------------------------


def test_a_corrupted_rootfs_makes_the_next_pull_rebuild(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    first = service.pull("debian:12")
    rootfs_blob = Path(first["rootfs_image"])
    corrupt(rootfs_blob)
    with pytest.raises(IntegrityError) as caught:
        service.store.verify_artifacts(first["install_manifest"])
    assert caught.value.details["artifact"] == "rootfs"
    assert service.inspect("debian:12")["installed"] is True  # a cheap check cannot tell

    second = service.pull("debian:12")
    assert second["built"] is True
    assert fake.calls["root"] == 2
    assert fake.calls["kernel"] == 1  # the kernel bundle still verified
    service.store.verify_artifacts(second["install_manifest"])
    assert second["rootfs_image"] == first["rootfs_image"]  # same bytes, repaired in place
    assert_no_debris(service)


def test_ensure_rebuilds_a_corrupted_rootfs(service: EnvironmentService, fake: FakeDebian) -> None:
    service.pull("debian:12")
    corrupt(blob_path(service, "debian:12", "rootfs"))
    installed = service.ensure("debian:12")
    assert fake.calls["root"] == 2
    assert installed.environment.name == "debian:12"
    assert installed.rootfs == blob_path(service, "debian:12", "rootfs")
    service.store.verify_artifacts(installed.manifest)


def test_ensure_builds_on_first_use_and_then_only_verifies(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    installed = service.ensure("debian:12")
    assert fake.calls["root"] == 1
    again = service.ensure("debian:12")
    assert fake.calls["root"] == 1
    assert (again.kernel, again.initramfs, again.rootfs) == (
        installed.kernel,
        installed.initramfs,
        installed.rootfs,
    )


def test_a_changed_rootfs_build_gets_a_new_digest_and_the_old_blob_goes(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    first = service.pull("debian:12")
    corrupt(Path(first["rootfs_image"]))
    fake.root_flavour = "v2"  # e.g. a Debian point release in between
    second = service.pull("debian:12")
    assert second["rootfs_image"] != first["rootfs_image"]
    assert not Path(first["rootfs_image"]).exists()
    assert_no_debris(service)


def test_a_corrupted_initramfs_rebuilds_only_the_initramfs(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    first = service.pull("debian:12")
    corrupt(Path(first["initramfs_image"]))
    second = service.pull("debian:12")
    assert second["built"] is True
    assert dict(fake.calls) == {"kernel": 1, "root": 1, "image": 1}
    assert second["initramfs_image"] == first["initramfs_image"]
    service.store.verify_artifacts(second["install_manifest"])


def test_a_corrupted_kernel_rebuilds_the_kernel_bundle(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    first = service.pull("debian:12")
    corrupt(Path(first["kernel_image"]))
    second = service.pull("debian:12")
    assert fake.calls["kernel"] == 2
    assert second["kernel_image"] == first["kernel_image"]
    service.store.verify_artifacts(second["install_manifest"])


def test_a_missing_blob_is_rebuilt(service: EnvironmentService, fake: FakeDebian) -> None:
    first = service.pull("debian:12")
    service.store.blobs.discard(first["install_manifest"]["artifacts"]["rootfs"]["sha256"])
    assert service.inspect("debian:12")["installed"] is False
    assert service.pull("debian:12")["built"] is True
    assert service.inspect("debian:12")["installed"] is True


def test_an_agent_change_rebuilds_only_the_initramfs(
    service: EnvironmentService, fake: FakeDebian, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = service.pull("debian:12")["install_manifest"]
    new_files = {**initramfs.guest_files(), "pyro/lib/pyro_mcp/agent/server.py": b"# agent v2\n"}
    monkeypatch.setattr(initramfs, "guest_files", lambda: new_files)
    assert initramfs.guest_digest() != first["guest_digest"]

    result = service.pull("debian:12")
    second = result["install_manifest"]
    assert result["built"] is True
    assert dict(fake.calls) == {"kernel": 1, "root": 1, "image": 1}
    assert second["guest_digest"] == initramfs.guest_digest()
    assert second["artifacts"]["rootfs"] == first["artifacts"]["rootfs"]
    assert second["artifacts"]["kernel"] == first["artifacts"]["kernel"]
    assert second["artifacts"]["initramfs"]["sha256"] != first["artifacts"]["initramfs"]["sha256"]
    assert b"# agent v2\n" in Path(result["initramfs_image"]).read_bytes()
    assert second["packages"] == first["packages"]
    assert_no_debris(service)  # the old initramfs blob is gone


def test_ensure_picks_up_an_agent_change(
    service: EnvironmentService, fake: FakeDebian, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = service.ensure("debian:12")
    monkeypatch.setattr(initramfs, "guest_digest", lambda: "f" * 64)
    second = service.ensure("debian:12")
    assert second.manifest["guest_digest"] == "f" * 64
    assert second.rootfs == first.rootfs
    assert fake.calls["root"] == 1


def test_an_agent_change_with_a_different_kernel_bundle_rebuilds_fully(
    service: EnvironmentService, fake: FakeDebian, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.pull("debian:12")
    service.store.kernel_record_path.unlink()
    monkeypatch.setattr(initramfs, "guest_digest", lambda: "e" * 64)
    assert service.pull("debian:12")["built"] is True
    assert fake.calls["kernel"] == 2
    assert fake.calls["root"] == 2


# --- info, list, inspect -------------------------------------------------------------------


def test_info_of_an_environment_not_installed(service: EnvironmentService) -> None:
    info = service.inspect("debian:12-build")
    assert set(info) == INFO_KEYS | {"source"}
    assert info["installed"] is False
    assert info["source_digest"] is None
    assert info["default_packages"] == [
        "bash",
        "coreutils",
        "git",
        "gcc",
        "make",
        "cmake",
        "python3",
    ]
    assert (info["distribution"], info["distribution_version"]) == ("debian", "12")
    assert info["platform"] == "linux-x86_64"
    assert info["oci_registry"] is info["oci_repository"] is info["oci_reference"] is None
    assert info["catalog_version"] == catalog.CATALOG_VERSION
    assert info["cache_dir"] == str(service.store.root)
    assert info["install_dir"] == str(service.store.install_dir(catalog.get("debian:12-build")))
    json.dumps(info)


def test_info_of_an_installed_environment_has_its_manifest(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    service.pull("debian:12")
    info = service.inspect("debian:12")
    assert set(info) == INFO_KEYS | {"source", "install_manifest"}
    assert info["installed"] is True
    assert info["install_manifest"] == service.store.manifest(catalog.get("debian:12"))
    json.dumps(info)


def test_list_covers_the_catalog(service: EnvironmentService, fake: FakeDebian) -> None:
    service.pull("debian:12-base")
    listed = service.list()
    assert [e["name"] for e in listed] == catalog.names()
    assert {e["name"]: e["installed"] for e in listed} == {
        "debian:12": False,
        "debian:12-base": True,
        "debian:12-build": False,
    }
    assert all(set(e) >= INFO_KEYS for e in listed)


def test_inspect_of_an_unknown_name(service: EnvironmentService) -> None:
    with pytest.raises(NotFoundError) as caught:
        service.inspect("nope")
    assert "debian:12, debian:12-base, debian:12-build" in str(caught.value)


# --- prune -------------------------------------------------------------------------------------


def test_prune_removes_debris_stale_installs_and_unreferenced_blobs(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    current = service.pull("debian:12")
    store = service.store
    debris = store.new_staging()
    (debris / "half").write_bytes(b"x")
    unknown = store.root / "installed" / "ubuntu_24.04-1.0.0"
    unknown.mkdir(parents=True)
    (unknown / "manifest.json").write_text("{}")
    orphan_source = store.root / "orphan"
    orphan_source.write_bytes(b"an artefact nothing names")
    orphan, _ = store.blobs.add(orphan_source)

    result = service.prune()
    assert set(result) == {"deleted_environment_dirs", "count", "deleted_blobs"}
    assert sorted(result["deleted_environment_dirs"]) == sorted([str(debris), str(unknown)])
    assert result["count"] == 2
    assert result["deleted_blobs"] == [orphan]
    assert not debris.exists() and not unknown.exists()
    assert not store.blobs.has(orphan)
    # The current install and the shared kernel bundle stay usable.
    store.verify_artifacts(current["install_manifest"])
    assert build.usable_kernel_bundle(store) is not None
    assert service.pull("debian:12")["built"] is False
    assert service.prune() == {"deleted_environment_dirs": [], "count": 0, "deleted_blobs": []}


def test_prune_drops_an_install_whose_blob_is_gone(
    service: EnvironmentService, fake: FakeDebian
) -> None:
    result = service.pull("debian:12")
    manifest = result["install_manifest"]
    service.store.blobs.discard(manifest["artifacts"]["rootfs"]["sha256"])
    pruned = service.prune()
    assert pruned["deleted_environment_dirs"] == [result["install_dir"]]
    initramfs_digest = manifest["artifacts"]["initramfs"]["sha256"]
    assert initramfs_digest in pruned["deleted_blobs"]
    assert service.inspect("debian:12")["installed"] is False


def test_prune_of_an_empty_cache(service: EnvironmentService) -> None:
    assert service.prune() == {"deleted_environment_dirs": [], "count": 0, "deleted_blobs": []}
