"""Named snapshots of a workspace: its whole writable disk (what was installed outside
/workspace too), taken copy-on-write inside the disk's qcow2 image (vmm/qcow2.py).

Taking one flushes the guest's page cache, then pauses the guest only for the snapshot's
metadata update, so the cut is one instant of the disk and costs the same whatever the
workspace wrote. A reset to one puts the disk back and boots it; the command history stays.
The implicit `baseline` is the seed: a reset to it starts from the environment's disk again.
Rows in the state store (state/snapshots.py) keep each snapshot's name, time and size.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_mcp.errors import ConflictError, InvalidArgumentError, NotFoundError
from pyro_mcp.runtime import launch
from pyro_mcp.runtime.workspaces import locks
from pyro_mcp.state import snapshots as rows
from pyro_mcp.state.store import StateStore
from pyro_mcp.vmm import qcow2

if TYPE_CHECKING:
    from pyro_mcp.agent_client.client import GuestClient
    from pyro_mcp.runtime.workspaces.service import WorkspaceService

BASELINE = "baseline"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SNAPSHOT_TIMEOUT_S = 120.0
# Usage of the writable layer (it holds /workspace, and the root's changes beside it).
_USAGE = ["stat", "-f", "-c", "%b %f %S %c %d", "/workspace"]


def check_name(name: Any) -> str:
    """A snapshot name: 1-64 of letters, digits, '.', '_', '-', starting with a letter or
    digit; `baseline` is the seed's."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"snapshot name {name!r:.80} is invalid",
            hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def _named(name: Any) -> str:
    checked = check_name(name)
    if checked == BASELINE:
        raise InvalidArgumentError(
            "'baseline' is reserved: it is the workspace's seed, not a named snapshot",
            hint="pick another name",
        )
    return checked


def revert(store: StateStore, workspace_id: str, disk: Path, name: str) -> dict[str, Any]:
    """Put the stopped disk back to snapshot `name` (the reset's part); its row."""
    row = rows.get(store, workspace_id, name)
    if row is None:
        raise NotFoundError(
            f"snapshot {name!r} does not exist in workspace {workspace_id}",
            hint=f"list them with `pyro workspace snapshot list {workspace_id}`",
        )
    qcow2.revert(disk, name)
    return row


def fresh_disk(store: StateStore, workspace_id: str, disk: Path) -> None:
    """The disk as the environment made it, for a reset to the baseline: back to its
    template state when it holds named snapshots (kept), else gone (made anew at boot)."""
    if disk.suffix == qcow2.SUFFIX and disk.exists() and rows.list_for(store, workspace_id):
        qcow2.revert(disk, qcow2.TEMPLATE)
    else:
        disk.unlink(missing_ok=True)


class WorkspaceSnapshots:
    """create_snapshot, list_snapshots and delete_snapshot of the SDK."""

    def __init__(self, service: WorkspaceService) -> None:
        self.service = service
        self.store = service.store

    def create(self, workspace_id: str, snapshot_name: str) -> dict[str, Any]:
        name = _named(snapshot_name)
        with self.service.using(workspace_id, "snapshot create") as (row, vm_dir):
            self._disk(row)  # one that takes snapshots
            if rows.get(self.store, workspace_id, name) is not None:
                raise self._taken(workspace_id, name)
            with launch.connect(vm_dir) as client:
                entries, used = _usage(client)
                client.sync(timeout=SNAPSHOT_TIMEOUT_S)
                client.request("disk.snapshot", {"name": name}, timeout=SNAPSHOT_TIMEOUT_S)
            record = {
                "workspace_id": workspace_id, "snapshot_name": name, "created_at": time.time(),
                "entry_count": entries, "bytes_written": used,
            }  # fmt: skip
            if not rows.add(self.store, record):  # another call took the name meanwhile
                raise self._taken(workspace_id, name)
        return {
            "workspace_id": workspace_id,
            "snapshot": _view(record),
            "execution_mode": row["execution_mode"],
        }

    def list(self, workspace_id: str) -> dict[str, Any]:
        """The baseline first, then the named snapshots, newest first."""
        row = self.service.row(workspace_id)
        seed = self.service.seed(row)
        baseline = {
            "workspace_id": workspace_id, "snapshot_name": BASELINE, "kind": "baseline",
            "created_at": row["created_at"], "entry_count": seed["entry_count"],
            "bytes_written": seed["bytes_written"], "deletable": False,
        }  # fmt: skip
        found = [baseline, *(_view(r) for r in rows.list_for(self.store, workspace_id))]
        return {"workspace_id": workspace_id, "count": len(found), "snapshots": found}

    def delete(self, workspace_id: str, snapshot_name: str) -> dict[str, Any]:
        name = check_name(snapshot_name)
        if name == BASELINE:
            raise InvalidArgumentError(
                "cannot delete the baseline snapshot: it is the workspace's seed",
                hint="delete the workspace to drop it",
            )
        with self._held(workspace_id) as (row, vm_dir):
            if rows.get(self.store, workspace_id, name) is None:
                raise NotFoundError(
                    f"snapshot {name!r} does not exist in workspace {workspace_id}",
                    hint=f"list them with `pyro workspace snapshot list {workspace_id}`",
                )
            if vm_dir is None:
                qcow2.delete(self._disk(row), name)
            else:
                with launch.connect(vm_dir) as client:
                    params = {"name": name, "delete": True}
                    client.request("disk.snapshot", params, timeout=SNAPSHOT_TIMEOUT_S)
            rows.remove(self.store, workspace_id, name)
        return {"workspace_id": workspace_id, "snapshot_name": name, "deleted": True}

    # --- machinery -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _held(self, workspace_id: str) -> Iterator[tuple[dict[str, Any], Path | None]]:
        """No lifecycle change meanwhile: the record, and the VM's directory if it runs."""
        directory = self.service.known_directory(workspace_id)
        with locks.hold(directory, locks.LIFE, exclusive=True, timeout=60.0):
            row = self.service.row(workspace_id, held=True)
            vm = self.store.get_vm(row["vm_id"]) if row["state"] == "started" else None
            yield row, Path(vm["vm_dir"]) if vm else None

    def _disk(self, row: dict[str, Any]) -> Path:
        disk = self.service.disk_path(row)
        if disk.suffix != qcow2.SUFFIX or not disk.exists():
            raise InvalidArgumentError(
                f"workspace {row['workspace_id']} has a raw disk, which takes no snapshots",
                hint="named snapshots need a workspace created while QEMU runs workspaces",
            )
        return disk

    @staticmethod
    def _taken(workspace_id: str, name: str) -> ConflictError:
        return ConflictError(
            f"snapshot {name!r} already exists in workspace {workspace_id}",
            hint="pick another name, or delete that snapshot first",
        )


def _usage(client: GuestClient) -> tuple[int, int]:
    """(inodes, bytes) in use on the guest's writable layer."""
    result = client.exec(_USAGE, timeout=30)
    try:
        blocks, free, size, inodes, inodes_free = map(int, result.stdout.split())
    except ValueError:
        return 0, 0
    return inodes - inodes_free, (blocks - free) * size


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "workspace_id": row["workspace_id"],
        "snapshot_name": row["snapshot_name"],
        "kind": "named",
        "created_at": row["created_at"],
        "entry_count": row["entry_count"],
        "bytes_written": row["bytes_written"],
        "deletable": True,
    }
