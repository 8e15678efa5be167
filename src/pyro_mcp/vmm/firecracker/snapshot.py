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

from pathlib import Path
from typing import Any

from pyro_mcp.vmm.base import Snapshot
from pyro_mcp.vmm.firecracker.api import FirecrackerApi
from pyro_mcp.vmm.firecracker.jail import claim, place

MEMORY_NAME = "memory"  # the snapshot's files inside the jail, when it writes or loads them
STATE_NAME = "state"
# Writing guest RAM runs at disk speed: seconds for gigabytes, far beyond an API call's wait.
SNAPSHOT_TIMEOUT_S = 300.0


def create_snapshot(
    api: FirecrackerApi, state: Path, memory: Path, *, jail_root: Path | None, jail_uid: int
) -> None:
    """Pause the VM and write a Full snapshot: device state to `state`, RAM to `memory`.

    The VM stays paused. `jail_root` is the jailed VMM's chroot, None for a VMM without one.
    """
    api.patch("/vm", {"state": "Paused"})
    if jail_root is None:
        # Firecracker runs as us: it can write straight to the destinations, no copy.
        api.put("/snapshot/create", _create_body(str(state.absolute()), str(memory.absolute())))
        return
    # The jailed VMM sees only its chroot: it writes there, and we take the files out.
    api.put("/snapshot/create", _create_body(f"/{STATE_NAME}", f"/{MEMORY_NAME}"))
    claim(jail_root / STATE_NAME, state, jail_uid)
    claim(jail_root / MEMORY_NAME, memory, jail_uid)


def load_body(snapshot: Snapshot, jail_root: Path | None) -> dict[str, Any]:
    """The `PUT /snapshot/load` request that resumes `snapshot`, linked into the jail if any.

    In the jail the RAM and state files are hard links, so nothing is copied (the RAM file
    must therefore be on the jail's file system).
    """
    if jail_root is None:
        memory, state = str(snapshot.memory.absolute()), str(snapshot.state.absolute())
    else:
        # The cache keeps both files read-only for all (0444): the jail's uid can read them,
        # and Firecracker's private mapping never writes back, so the links stay unchanged.
        place(snapshot.memory, jail_root / MEMORY_NAME, may_copy=False)
        place(snapshot.state, jail_root / STATE_NAME, may_copy=True)
        memory, state = f"/{MEMORY_NAME}", f"/{STATE_NAME}"
    return {
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": memory},
        "resume_vm": True,
    }


def _create_body(state: str, memory: str) -> dict[str, Any]:
    return {"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": memory}
