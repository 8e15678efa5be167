"""A real `debian:12`, built once per run by the `built_debian12` fixture (tests/conftest.py).

Nothing here is faked: mmdebstrap, the Debian kernel, mke2fs, and QEMU for the doctor's probes.
Tests that change artefacts work on a copy of the shared cache, never on the cache itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.environments import catalog
from pyro_mcp.environments.blobs import sha256_file
from pyro_mcp.errors import IntegrityError
from pyro_mcp.sdk import Pyro

pytestmark = pytest.mark.integration

EXT4_MAGIC = 0xEF53
XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point QEMU needs to boot an ELF vmlinux


def manifest_of(built: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = built.pull_result["install_manifest"]
    return manifest


def artifact(built: Any, name: str) -> Path:
    digest = manifest_of(built)["artifacts"][name]["sha256"]
    return Path(built.cache_dir) / "environments" / "blobs" / "sha256" / digest


def elf_notes(data: bytes) -> list[tuple[bytes, int]]:
    """(owner, type) of every note in the PT_NOTE segments of a 64-bit little-endian ELF."""
    phoff = struct.unpack_from("<Q", data, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    notes = []
    for index in range(phnum):
        p_type, _, offset, _, _, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + index * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos = offset
        while pos + 12 <= offset + filesz:
            namesz, descsz, note_type = struct.unpack_from("<III", data, pos)
            notes.append((data[pos + 12 : pos + 12 + namesz].rstrip(b"\x00"), note_type))
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return notes


def debugfs(image: Path, request: str) -> str:
    proc = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    )
    return proc.stdout + proc.stderr


def test_every_artefact_matches_its_manifest_digest(built_debian12: Any) -> None:
    manifest = manifest_of(built_debian12)
    assert set(manifest["artifacts"]) == {"kernel", "initramfs", "rootfs"}
    for name, entry in manifest["artifacts"].items():
        path = artifact(built_debian12, name)
        assert sha256_file(path) == entry["sha256"], name
        assert path.stat().st_size == entry["size"], name
    result = built_debian12.pull_result
    assert Path(result["kernel_image"]) == artifact(built_debian12, "kernel")
    assert Path(result["rootfs_image"]) == artifact(built_debian12, "rootfs")
    record = json.loads(
        (Path(built_debian12.cache_dir) / "environments" / "kernel.json").read_text()
    )
    assert record["vmlinux"] == manifest["artifacts"]["kernel"]["sha256"]
    assert record["kernel_version"] == manifest["kernel_version"]


def test_the_kernel_is_an_x86_64_elf_with_a_pvh_entry(built_debian12: Any) -> None:
    data = artifact(built_debian12, "kernel").read_bytes()
    assert data[:4] == b"\x7fELF"
    assert data[4] == 2  # 64-bit
    assert struct.unpack_from("<H", data, 18)[0] == 0x3E  # x86-64
    assert (b"Xen", XEN_ELFNOTE_PHYS32_ENTRY) in elf_notes(data)
    assert manifest_of(built_debian12)["kernel_version"].endswith("-cloud-amd64")


def test_the_initramfs_holds_init_busybox_modules_and_agent(
    built_debian12: Any, read_newc: Callable[[bytes], Any]
) -> None:
    archive = read_newc(artifact(built_debian12, "initramfs").read_bytes())
    names = set(archive.names())
    for needed in (
        "init",
        "bin/busybox",
        "lib/modules/order",
        "pyro/lib/pyro_mcp/agent/__main__.py",
        "pyro/lib/pyro_mcp/protocol/frames.py",
    ):
        assert needed in names, needed
    assert archive.trailers == 2  # the base part and the pyro part
    order = archive.get("lib/modules/order").data.decode().split()
    for module in order:
        member = archive.get(f"lib/modules/{module}.ko")
        assert member.data.startswith(b"\x7fELF"), module
    assert {"virtio_blk", "virtio_console", "overlay"} <= set(order)
    assert archive.get("bin/busybox").data.startswith(b"\x7fELF")


def test_the_rootfs_is_a_labelled_ext4_image_with_git_and_python3(built_debian12: Any) -> None:
    image = artifact(built_debian12, "rootfs")
    with image.open("rb") as handle:
        handle.seek(1024)
        superblock = handle.read(1024)
    assert struct.unpack_from("<H", superblock, 56)[0] == EXT4_MAGIC
    assert superblock[120:136].rstrip(b"\x00") == b"pyro-root"
    compat = struct.unpack_from("<I", superblock, 92)[0]
    assert not compat & 0x4, "the read-only root image should have no journal"
    if shutil.which("debugfs") is None and not Path("/usr/sbin/debugfs").exists():
        pytest.skip("debugfs missing: apt-get install -y e2fsprogs")
    assert "Type: regular" in debugfs(image, "stat /usr/bin/git")
    assert "Type: symlink" in debugfs(image, "stat /usr/bin/python3")
    assert "File not found" in debugfs(image, "stat /usr/bin/no-such-tool")  # the check bites
    assert "pyro" in debugfs(image, "ls -p /opt")
    assert "File not found" not in debugfs(image, "stat /workspace")


def test_the_manifest_lists_the_installed_packages(built_debian12: Any) -> None:
    manifest = manifest_of(built_debian12)
    packages = dict(p.split("=", 1) for p in manifest["packages"])
    for needed in ("git", "python3", "bash", "coreutils", "ca-certificates"):
        assert packages.get(needed), needed
    assert manifest["name"] == "debian:12"
    assert manifest["suite"] == catalog.SUITE
    assert manifest["guest_digest"]


def test_a_second_pull_builds_nothing(built_debian12: Any) -> None:
    pyro = built_debian12.pyro()
    manifest_path = Path(built_debian12.pull_result["install_dir"]) / "manifest.json"
    before = manifest_path.stat().st_mtime_ns
    again = pyro.pull_environment(built_debian12.name)
    assert again["built"] is False
    assert again["install_manifest"] == manifest_of(built_debian12)
    assert manifest_path.stat().st_mtime_ns == before
    assert pyro.inspect_environment(built_debian12.name)["installed"] is True


def test_a_corrupted_initramfs_in_a_copy_is_caught_and_rebuilt(
    built_debian12: Any, tmp_path: Path
) -> None:
    copy = tmp_path / "cache-copy"
    subprocess.run(
        ["cp", "-a", "--reflink=auto", str(built_debian12.cache_dir), str(copy)], check=True
    )
    pyro = Pyro(cache_dir=copy)
    store = pyro.environments.store
    manifest = store.manifest(catalog.get(built_debian12.name))
    assert manifest is not None
    digest = manifest["artifacts"]["initramfs"]["sha256"]
    target = store.blobs.path(digest)
    assert not target.samefile(artifact(built_debian12, "initramfs"))  # a real copy
    target.chmod(0o644)
    with target.open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0x55]))

    with pytest.raises(IntegrityError) as caught:
        store.verify_artifacts(manifest)
    assert caught.value.details["artifact"] == "initramfs"
    assert caught.value.details["actual"] == hashlib.sha256(target.read_bytes()).hexdigest()

    installed = pyro.environments.ensure(built_debian12.name)
    assert installed.initramfs == target
    assert sha256_file(target) == digest  # rebuilt to the very same bytes
    assert installed.manifest["artifacts"]["rootfs"] == manifest["artifacts"]["rootfs"]
    assert pyro.pull_environment(built_debian12.name)["built"] is False
    # The shared cache was never touched.
    assert sha256_file(artifact(built_debian12, "initramfs")) == digest


def test_the_doctor_on_the_built_kernel(built_debian12: Any, leak_guard: Any) -> None:
    # The boot probes start QEMU below this process; leak_guard proves each one ended.
    report = built_debian12.pyro().doctor()
    json.dumps(report)
    assert report["backend"]["selected"] in {"firecracker", "qemu-kvm", "qemu-tcg", None}
    assert report["runtime_ok"] is (report["backend"]["selected"] is not None)
    assert report["environments"][0] == {"name": "debian:12", "installed": True}
    if not Path("/sys/module/kvm_pvm").exists():
        return  # elsewhere only consistency can be asserted
    # This host: /dev/kvm is nested PVM, which cannot run a stock guest kernel.
    assert report["kvm"]["exists"] is True
    assert report["kvm"]["hypervisor"] == "kvm_pvm"
    assert report["kvm"]["usable"] is False
    assert report["boot_probes"]["kvm"]["ok"] is False
    assert report["boot_probes"]["tcg"]["ok"] is True, report["boot_probes"]["tcg"]["reason"]
    assert report["backend"]["selected"] == "qemu-tcg"
    assert report["runtime_ok"] is True
