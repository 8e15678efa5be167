"""A VM's record read back and reconciled: a started VM whose supervisor is gone is stopped.

Every VM call reads its record through here, so whichever `pyro` process looks first records
a dead supervisor's VM as stopped, with the reason, and removes what the VM left behind.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pyro_mcp.errors import NotFoundError, WrongStateError
from pyro_mcp.host.process import ProcessRef
from pyro_mcp.state.store import StateStore
from pyro_mcp.supervisor.main import remove_vm_files

SUPERVISOR_DIED = "supervisor_died: the VM's supervisor process is gone"


def supervisor_of(row: dict[str, Any]) -> ProcessRef:
    return ProcessRef(row["supervisor_pid"] or 0, row["supervisor_start"] or 0)


def load(store: StateStore, vm_id: str) -> dict[str, Any]:
    """The VM's reconciled record; NotFoundError when there is none."""
    row = store.get_vm(vm_id)
    if row is None:
        raise NotFoundError(f"VM {vm_id!r} does not exist", hint="`vm_id`s come from create_vm")
    return reconcile(store, row)


def load_started(store: StateStore, vm_id: str) -> dict[str, Any]:
    """The record of a VM that is started; WrongStateError, with its stop reason, otherwise."""
    row = load(store, vm_id)
    if row["state"] != "started":
        why = f" ({row['stop_reason']})" if row["stop_reason"] else ""
        raise WrongStateError(f"VM {vm_id} is {row['state']}{why}", hint="call start_vm first")
    return row


def reconcile(store: StateStore, row: dict[str, Any]) -> dict[str, Any]:
    """`row` as it really is: a started VM whose supervisor is gone is recorded stopped."""
    if row["state"] != "started" or supervisor_of(row).alive():
        return row
    fresh = store.get_vm(row["vm_id"])  # the supervisor may have just recorded it
    if fresh is None or fresh["state"] != "started":
        return fresh or {**row, "state": "stopped"}
    store.update_vm(
        row["vm_id"],
        state="stopped",
        stop_reason=SUPERVISOR_DIED,
        stopped_at=time.time(),
        supervisor_pid=None,
        net_slot=None,  # its namespace died with it
    )
    remove_vm_files(Path(row["vm_dir"]))
    return {**row, "state": "stopped", "stop_reason": SUPERVISOR_DIED}
