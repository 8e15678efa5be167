"""VM rows that change together: a standby VM claimed, and its process handed to another VM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from framework.state_rows import vm_record
from pyro_mcp.state import vms as vm_rows
from pyro_mcp.state.store import StateStore

KIND = {
    "environment": "debian:12",
    "vcpu_count": 1,
    "mem_mib": 1024,
    "disk_mib": 0,
    "network_enabled": 0,
}


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


def add_vm(store: StateStore, vm_id: str, **fields: Any) -> None:
    store.insert_vm(vm_record(vm_id, execution_mode="qemu-tcg", **fields))


def test_claim_skips_what_the_caller_cannot_use_and_marks_the_first_it_can(
    store: StateStore,
) -> None:
    add_vm(store, "dying", state="standby", created_at=1.0)
    add_vm(store, "ready", state="standby", created_at=2.0)
    seen: list[str] = []

    def usable(row: dict[str, Any]) -> bool:
        seen.append(row["vm_id"])
        return row["vm_id"] != "dying"

    claimed = vm_rows.claim_standby(store, KIND, "qemu-tcg", usable)
    assert claimed is not None and (claimed["vm_id"], claimed["state"]) == ("ready", "standby")
    assert seen == ["dying", "ready"]  # oldest first
    assert [(r["vm_id"], r["state"]) for r in store.list_vms()] == [
        ("dying", "standby"),
        ("ready", "claimed"),
    ]
    assert vm_rows.claim_standby(store, KIND, "qemu-tcg", usable) is None


def test_hand_over_gives_the_vm_the_standbys_process_and_drops_the_standby(
    store: StateStore,
) -> None:
    add_vm(store, "wanted", stop_reason="an earlier stop")
    add_vm(
        store, "spare", state="claimed", backend="qemu", vm_dir="/vms/spare",
        supervisor_pid=1234, supervisor_start=99,
    )  # fmt: skip
    spare = store.get_vm("spare")
    assert spare is not None
    vm_rows.hand_over(store, spare, "wanted", 50.0)
    assert store.get_vm("spare") is None
    row = store.get_vm("wanted")
    assert row is not None
    assert (row["state"], row["backend"], row["vm_dir"]) == ("started", "qemu", "/vms/spare")
    assert (row["supervisor_pid"], row["supervisor_start"], row["started_at"]) == (1234, 99, 50.0)
    assert (row["boot_mode"], row["boot_note"], row["stop_reason"]) == ("standby", "", None)


def test_serving_workspace_lists_every_vm_of_that_workspace(store: StateStore) -> None:
    add_vm(store, "current", workspace_id="ws1")
    add_vm(store, "orphan", workspace_id="ws1")
    add_vm(store, "other", workspace_id="ws2")
    add_vm(store, "plain")
    assert sorted(vm_rows.serving_workspace(store, "ws1")) == ["current", "orphan"]
    assert vm_rows.serving_workspace(store, "ws3") == []
