"""Firecracker warm start: a template booted to agent-ready, snapshotted, restored per VM.

Firecracker writes guest RAM only when it takes the snapshot (`PUT /snapshot/create`, Full),
so the template boots like any VM and the RAM file appears at save time. The snapshot stores
every host path the devices use: the vsock `uds_path` (already relative: `vsock.sock`) and the
drives' `path_on_host`, which a restore reopens as stored (the snapshot docs: "at the same
relative paths"; we set no override on load). A template therefore names its
disks relative to Firecracker's working directory (the VM directory, or the jail's root where
every path is `/rootfs`), and a restore lays out its own disks under the same names. The
kernel and initrd paths are stored too but never reopened. `PUT /snapshot/load` with the File
backend maps the RAM file MAP_PRIVATE: pages load lazily and writes stay private to the VM,
so every restored VM shares one read-only file (load and resume of 256 MiB: about 9 ms).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from subprocess import Popen
from typing import TYPE_CHECKING, Any

from pyro_mcp.errors import VmmError
from pyro_mcp.vmm.base import Snapshot, VmSpec
from pyro_mcp.vmm.firecracker import FirecrackerApi, _place, _require_kvm

if TYPE_CHECKING:
    from pyro_mcp.vmm.firecracker import FirecrackerBackend

MEMORY_NAME = "memory"  # the snapshot's files inside the jail, when it writes or loads them
STATE_NAME = "state"
# Writing guest RAM runs at disk speed: seconds for gigabytes, far beyond an API call's wait.
SNAPSHOT_TIMEOUT_S = 300.0
_COPY_CHUNK = 1 << 20


def launch_template(
    backend: FirecrackerBackend, spec: VmSpec, console_log: Path, memory: Path
) -> Popen[bytes]:
    """Boot like launch(), with portable disk names, and remember where RAM is to go."""
    _require_kvm()
    files = backend.prepare(spec, portable=True)
    proc = backend.start(spec, console_log, lambda api: backend.configure(api, spec, files))
    backend.template_memory[spec.vm_dir] = memory
    return proc


def save_snapshot(backend: FirecrackerBackend, spec: VmSpec, state: Path) -> None:
    """Pause the template and write a Full snapshot: device state to `state`, RAM to the
    file named at launch_template(). The VM stays paused; the caller kills it."""
    memory = backend.template_memory.pop(spec.vm_dir, None)
    if memory is None:
        raise VmmError(
            f"VM {spec.vm_id} was not started by launch_template(): no RAM file to write"
        )
    api = FirecrackerApi(backend.api_socket_path(spec), timeout=SNAPSHOT_TIMEOUT_S)
    api.patch("/vm", {"state": "Paused"})
    if backend.jailer is None:
        # Firecracker runs as us: it can write straight to the destinations, no copy.
        api.put("/snapshot/create", _create_body(str(state.absolute()), str(memory.absolute())))
        return
    # The jailed VMM sees only its chroot: it writes there, and we take the files out.
    root = backend.jail_root(spec)
    api.put("/snapshot/create", _create_body(f"/{STATE_NAME}", f"/{MEMORY_NAME}"))
    _claim(root / STATE_NAME, state, backend.uid)
    _claim(root / MEMORY_NAME, memory, backend.uid)


def restore(
    backend: FirecrackerBackend, spec: VmSpec, console_log: Path, snapshot: Snapshot
) -> Popen[bytes]:
    """Start a fresh Firecracker (jailed if so configured), load `snapshot` and resume it.

    The disks go where the snapshot expects them (prepare(portable=True)); in the jail the
    RAM and state files are hard links, so nothing is copied (the RAM file must therefore be
    on the VM directory's file system). `spec` must have the template's disks (with or
    without a writable one): a stored drive that is missing fails the load. On any failure
    Firecracker exits, start() reaps it, and the error is a PyroError (cold boot follows).
    """
    _require_kvm()
    backend.prepare(spec, portable=True)
    if backend.jailer is None:
        memory, state = str(snapshot.memory.absolute()), str(snapshot.state.absolute())
    else:
        root = backend.jail_root(spec)
        # The cache keeps both files read-only for all (0444): the jail's uid can read them,
        # and Firecracker's private mapping never writes back, so the links stay unchanged.
        _place(snapshot.memory, root / MEMORY_NAME, may_copy=False)
        _place(snapshot.state, root / STATE_NAME, may_copy=True)
        memory, state = f"/{MEMORY_NAME}", f"/{STATE_NAME}"
    body = {
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": memory},
        "resume_vm": True,
    }
    return backend.start(spec, console_log, lambda api: api.put("/snapshot/load", body))


def _create_body(state: str, memory: str) -> dict[str, Any]:
    return {"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": memory}


def _claim(source: Path, target: Path, jail_uid: int) -> None:
    """Move a file the jailed VMM wrote out of its chroot, then make it ours and read-only.

    The chroot is writable by the jail's uid, so the name might have been swapped for a
    symbolic link, or a hard link to a file of someone else's: only a regular file with one
    link, owned by the jail's uid, is taken. The check looks where the jail cannot reach: at
    the renamed file, or at the open descriptor that a copy across file systems reads.
    """
    try:
        try:
            os.replace(source, target)  # a rename never follows a symbolic link
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _copy_out(source, target, jail_uid)
        else:
            if not _written_by(os.lstat(target), jail_uid):
                target.unlink()  # only the name: a link's target stays untouched
                raise _not_written_by_the_vmm(source)
        os.chown(target, os.geteuid(), os.getegid())
        os.chmod(target, 0o444)  # what the cache makes of it anyway; a jail's uid reads it
    except OSError as exc:
        raise VmmError(
            f"cannot move the snapshot file {source} to {target}: {exc.strerror or exc}"
        ) from exc


def _copy_out(source: Path, target: Path, jail_uid: int) -> None:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _not_written_by_the_vmm(source) from exc
        raise
    with os.fdopen(fd, "rb") as src:
        if not _written_by(os.fstat(fd), jail_uid):
            raise _not_written_by_the_vmm(source)
        with target.open("wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_CHUNK)
    source.unlink()


def _written_by(st: os.stat_result, jail_uid: int) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_uid == jail_uid and st.st_nlink == 1


def _not_written_by_the_vmm(source: Path) -> VmmError:
    return VmmError(
        f"{source} is not a file the jailed Firecracker wrote; no snapshot is made from it",
        hint="something in the jail replaced the snapshot file",
    )
