"""Uplink slots: each networked VM holds one, unique among the VM rows that hold one.

A slot goes with its row (a deleted VM frees it) and is cleared when the VM stops. The
search starts after the slot handed out last, so a slot just freed, whose namespace the
kernel may still be tearing down, is the last to be taken again.
"""

from __future__ import annotations

from pyro_mcp.state.store import StateStore

_CURSOR = "net_slot_cursor"


class SlotsExhaustedError(LookupError):
    pass


def allocate(store: StateStore, vm_id: str, slots: int) -> int:
    """Give VM `vm_id` a free slot below `slots`; SlotsExhaustedError when none is free."""
    with store.transaction() as conn:
        used = {
            row[0] for row in conn.execute("SELECT net_slot FROM vms WHERE net_slot IS NOT NULL")
        }
        found = conn.execute("SELECT value FROM counters WHERE name = ?", (_CURSOR,)).fetchone()
        start = int(found[0]) % slots if found else 0
        slot = next(
            ((start + i) % slots for i in range(slots) if (start + i) % slots not in used), None
        )
        if slot is None:
            raise SlotsExhaustedError(f"all {slots} network slots are in use")
        conn.execute("UPDATE vms SET net_slot = ? WHERE vm_id = ?", (slot, vm_id))
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (_CURSOR, slot + 1),
        )
    return slot


def release(store: StateStore, vm_id: str) -> None:
    with store.transaction() as conn:
        conn.execute("UPDATE vms SET net_slot = NULL WHERE vm_id = ?", (vm_id,))


def held(store: StateStore) -> dict[str, int]:
    """vm_id -> slot, for every VM holding one."""
    with store.connect() as conn:
        rows = conn.execute("SELECT vm_id, net_slot FROM vms WHERE net_slot IS NOT NULL")
        return {str(vm_id): int(slot) for vm_id, slot in rows}
