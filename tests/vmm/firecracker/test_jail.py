"""The jail: the jailer's argv and chroot, the files placed in it and the ids it runs as, and
taking the files the jailed VMM wrote back out of it.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from framework.firecracker_harness import jailed_backend, make_spec
from pyro_mcp.errors import HostRequirementError, InvalidArgumentError, VmmError
from pyro_mcp.vmm.base import VmSpec
from pyro_mcp.vmm.firecracker.backend import FirecrackerBackend
from pyro_mcp.vmm.firecracker.jail import claim
from pyro_mcp.vmm.firecracker.layout import GuestFiles

JAIL_UID = os.getuid() or 64000  # as jailed_backend has it: our own id, unless we are root


def cross_device(source: Any, target: Any) -> None:
    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))


# --- putting the VM into the jail ---------------------------------------------------------


def test_jailer_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path, rw=False)
    backend = jailed_backend(tmp_path, monkeypatch)
    argv = backend.command(spec)
    # A python helper opens the PID namespace that ties the jailed VMM to our lifetime.
    assert argv[:4] == [sys.executable, "-I", "-S", "-c"]
    assert "os.unshare(os.CLONE_NEWPID)" in argv[4]
    assert argv[5:] == [
        str(tmp_path / "bin" / "jailer"), "--id", spec.vm_id,
        "--exec-file", str(tmp_path / "bin" / "firecracker"),
        "--uid", str(backend.uid), "--gid", str(backend.gid),
        "--chroot-base-dir", str(spec.vm_dir / "jail"),
        "--", "--api-sock", "/api.sock",
    ]  # fmt: skip
    root = spec.vm_dir / "jail" / "firecracker" / spec.vm_id / "root"
    assert backend.jail_root(spec) == root
    assert backend.api_socket_path(spec) == root / "api.sock"
    assert backend.agent_socket_path(spec) == root / "vsock.sock"


def test_jail_layout_links_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path, rw=True)
    backend = jailed_backend(tmp_path, monkeypatch)
    root = backend.jail_root(spec)
    root.mkdir(parents=True)
    (root / "stale").write_text("from an earlier run")

    files = backend.prepare(spec)

    assert files == GuestFiles("/vmlinux", "/initrd", "/rootfs", "/rw")
    assert sorted(p.name for p in root.iterdir()) == ["initrd", "rootfs", "rw", "vmlinux"]
    assert spec.rw_disk is not None
    pairs = {"vmlinux": spec.kernel, "initrd": spec.initramfs, "rootfs": spec.rootfs,
             "rw": spec.rw_disk}  # fmt: skip
    for name, source in pairs.items():
        assert (root / name).samefile(source), f"{name} is not a hard link"
    rw = (root / "rw").stat()
    assert (rw.st_uid, rw.st_gid) == (backend.uid, backend.gid)


def test_jail_copies_small_files_across_file_systems_but_never_a_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tmp_path, rw=False)
    backend = jailed_backend(tmp_path, monkeypatch)
    monkeypatch.setattr(os, "link", cross_device)
    with pytest.raises(HostRequirementError, match="different file systems") as caught:
        backend.prepare(spec)
    assert caught.value.hint is not None and "PYRO_STATE_DIR" in caught.value.hint
    root = backend.jail_root(spec)
    kernel = root / "vmlinux"
    assert kernel.read_bytes() == spec.kernel.read_bytes() and not kernel.samefile(spec.kernel)
    assert stat.S_IMODE(kernel.stat().st_mode) == 0o444
    assert (root / "initrd").is_file() and not (root / "rootfs").exists()


def test_jail_refuses_an_id_the_jailer_would_reject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(tmp_path, rw=False)
    bad = VmSpec(**{**spec.__dict__, "vm_id": "../escape"})
    with pytest.raises(InvalidArgumentError, match="cannot name a Firecracker jail"):
        jailed_backend(tmp_path, monkeypatch).prepare(bad)


def test_jail_ids_must_be_unprivileged_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    for value in ("0", "root", "-5"):
        monkeypatch.setenv("PYRO_JAILER_UID", value)
        with pytest.raises(InvalidArgumentError, match="PYRO_JAILER_UID"):
            FirecrackerBackend(tmp_path / "firecracker", tmp_path / "jailer", use_jailer=True)
    monkeypatch.delenv("PYRO_JAILER_UID")
    backend = FirecrackerBackend(tmp_path / "firecracker", tmp_path / "jailer", use_jailer=True)
    assert (backend.uid, backend.gid) == (64000, 64000)


# --- taking the snapshot files out ----------------------------------------------------------


def written_by_the_vmm(tmp_path: Path, data: bytes) -> Path:
    """A file in the chroot as the jailed VMM leaves it: owned by the jail's uid."""
    (tmp_path / "root").mkdir()
    path = tmp_path / "root" / "memory"
    path.write_bytes(data)
    os.chown(path, JAIL_UID, -1)
    return path


@pytest.mark.parametrize("across", [False, True], ids=["rename", "copy"])
def test_claim_takes_the_file_out_and_makes_it_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, across: bool
) -> None:
    source = written_by_the_vmm(tmp_path, b"ram" * 1000)
    target = tmp_path / "memory.ram"
    if across:
        monkeypatch.setattr(os, "replace", cross_device)

    claim(source, target, JAIL_UID)

    assert target.read_bytes() == b"ram" * 1000 and not source.exists()
    st = target.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (os.geteuid(), os.getegid(), 0o444)
    assert st.st_nlink == 1


@pytest.mark.parametrize("across", [False, True], ids=["rename", "copy"])
@pytest.mark.parametrize("planted", ["symlink", "hardlink"])
def test_claim_refuses_a_file_the_jail_swapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str, across: bool
) -> None:
    source = written_by_the_vmm(tmp_path, b"ram")
    secret = tmp_path / "secret"
    secret.write_text("not for the cache")
    source.unlink()
    if planted == "symlink":
        source.symlink_to(secret)
    else:
        os.link(secret, source)
    if across:
        monkeypatch.setattr(os, "replace", cross_device)
    target = tmp_path / "memory.ram"

    with pytest.raises(VmmError, match="not a file the jailed Firecracker wrote"):
        claim(source, target, JAIL_UID)

    assert not target.exists() and not target.is_symlink()
    assert secret.read_text() == "not for the cache" and secret.stat().st_mode & 0o777 != 0o444
