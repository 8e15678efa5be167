"""Uplink slots in the state store: unique among the VM rows, freed with their row, and the
slot freed last taken last."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from framework.state_rows import vm_record
from pyro_mcp.state import network as slots
from pyro_mcp.state import vms as vm_rows
from pyro_mcp.state.network import SlotsExhaustedError
from pyro_mcp.state.store import StateStore

KIND = {"environment": "debian:12", "vcpu_count": 1, "mem_mib": 1024, "disk_mib": 0}


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


def add_vm(store: StateStore, vm_id: str, **fields: Any) -> str:
    store.insert_vm(
        vm_record(vm_id, **{"execution_mode": "qemu-tcg", "network_enabled": 1, **fields})
    )
    return vm_id


def test_fifty_vms_get_fifty_distinct_slots(store: StateStore) -> None:
    ids = [add_vm(store, f"vm{i:02d}", created_at=float(i)) for i in range(50)]
    given = {vm_id: slots.allocate(store, vm_id, 64) for vm_id in ids}
    assert len(set(given.values())) == 50
    assert all(0 <= slot < 64 for slot in given.values())
    assert slots.held(store) == given
    assert {row["vm_id"]: row["net_slot"] for row in store.list_vms()} == given


def test_a_pool_exactly_as_large_as_the_vms_is_filled_without_error(store: StateStore) -> None:
    given = [slots.allocate(store, add_vm(store, f"vm{i}"), 8) for i in range(8)]
    assert sorted(given) == list(range(8))


def test_a_freed_slot_is_the_last_to_be_taken_again(store: StateStore) -> None:
    a, b, c, d, e = (add_vm(store, name) for name in "abcde")
    assert [slots.allocate(store, vm, 4) for vm in (a, b, c)] == [0, 1, 2]
    slots.release(store, a)
    # Slot 0 is free, but its namespace may still be going away: 3 comes first.
    assert slots.allocate(store, d, 4) == 3
    assert slots.allocate(store, e, 4) == 0
    assert slots.held(store) == {"b": 1, "c": 2, "d": 3, "e": 0}


def test_the_search_wraps_around_the_pool(store: StateStore) -> None:
    first = [slots.allocate(store, add_vm(store, f"vm{i}"), 4) for i in range(4)]
    assert first == [0, 1, 2, 3]
    slots.release(store, "vm1")
    slots.release(store, "vm2")
    assert slots.allocate(store, add_vm(store, "late1"), 4) == 1
    assert slots.allocate(store, add_vm(store, "late2"), 4) == 2


def test_every_slot_taken_is_an_error_and_changes_nothing(store: StateStore) -> None:
    for i in range(4):
        slots.allocate(store, add_vm(store, f"vm{i}"), 4)
    held = slots.held(store)
    add_vm(store, "one-too-many")
    with pytest.raises(SlotsExhaustedError, match="all 4 network slots are in use"):
        slots.allocate(store, "one-too-many", 4)
    assert slots.held(store) == held
    row = store.get_vm("one-too-many")
    assert row is not None and row["net_slot"] is None


def test_release_frees_only_that_vms_slot_and_may_be_repeated(store: StateStore) -> None:
    a, b = add_vm(store, "a"), add_vm(store, "b")
    slots.allocate(store, a, 4)
    slots.allocate(store, b, 4)
    slots.release(store, a)
    slots.release(store, a)
    slots.release(store, "never-existed")
    assert slots.held(store) == {"b": 1}


def test_a_deleted_vm_frees_its_slot(store: StateStore) -> None:
    for i in range(2):
        slots.allocate(store, add_vm(store, f"vm{i}"), 2)
    store.delete_vm("vm0")
    assert slots.held(store) == {"vm1": 1}
    assert slots.allocate(store, add_vm(store, "next"), 2) == 0


def test_two_rows_cannot_hold_the_same_slot(store: StateStore) -> None:
    a, b = add_vm(store, "a"), add_vm(store, "b")
    slot = slots.allocate(store, a, 4)
    with pytest.raises(sqlite3.IntegrityError):
        store.update_vm(b, net_slot=slot)
    with pytest.raises(sqlite3.IntegrityError):
        add_vm(store, "c", net_slot=slot)
    assert slots.held(store) == {"a": slot}


def test_any_number_of_rows_may_hold_no_slot(store: StateStore) -> None:
    for i in range(3):
        add_vm(store, f"off{i}", network_enabled=0)
    assert slots.held(store) == {}
    assert slots.allocate(store, add_vm(store, "on"), 4) == 0


def test_the_cursor_survives_a_new_store_on_the_same_database(tmp_path: Path) -> None:
    first = StateStore(tmp_path / "state")
    slots.allocate(first, add_vm(first, "a"), 4)
    slots.release(first, "a")
    # Another pyro process (a store of its own) continues where the last search stopped.
    second = StateStore(tmp_path / "state")
    assert slots.allocate(second, add_vm(second, "b"), 4) == 1


def test_hand_over_moves_the_standbys_slot_to_the_claiming_vm(store: StateStore) -> None:
    wanted = add_vm(store, "wanted")
    spare = add_vm(store, "spare", state="claimed", backend="qemu", vm_dir="/vms/spare",
                   supervisor_pid=1234, supervisor_start=99)  # fmt: skip
    own = slots.allocate(store, wanted, 8)
    standby_slot = slots.allocate(store, spare, 8)
    claimed = store.get_vm(spare)
    assert claimed is not None
    vm_rows.hand_over(store, claimed, wanted, 50.0)
    # The uplink that exists (the standby's) goes with the process; the one reserved is freed.
    assert slots.held(store) == {"wanted": standby_slot}
    assert own not in slots.held(store).values()
    row = store.get_vm(wanted)
    assert row is not None and (row["state"], row["vm_dir"]) == ("started", "/vms/spare")


def test_hand_over_of_a_standby_without_a_network_leaves_no_slot(store: StateStore) -> None:
    wanted = add_vm(store, "wanted", network_enabled=0)
    spare = add_vm(store, "spare", state="claimed", network_enabled=0)
    claimed = store.get_vm(spare)
    assert claimed is not None
    vm_rows.hand_over(store, claimed, wanted, 50.0)
    assert slots.held(store) == {}


def test_claim_standby_only_takes_one_with_the_same_network_setting(store: StateStore) -> None:
    add_vm(store, "plain", state="standby", network_enabled=0, created_at=1.0)
    add_vm(store, "networked", state="standby", network_enabled=1, created_at=2.0)
    slots.allocate(store, "networked", 4)

    def claim(network_enabled: int) -> str | None:
        kind = {**KIND, "network_enabled": network_enabled}
        row = vm_rows.claim_standby(store, kind, "qemu-tcg", lambda row: True)
        return None if row is None else str(row["vm_id"])

    assert claim(1) == "networked"
    assert claim(1) is None  # the only networked one is claimed now
    assert claim(0) == "plain"
    assert claim(0) is None
    claimed = store.get_vm("networked")
    assert claimed is not None and claimed["net_slot"] == 0
