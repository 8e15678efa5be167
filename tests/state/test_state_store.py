"""The SQLite state store: records, WAL mode, private directory, and writers in two processes.

(Named test_state_store.py: tests/environments/test_store.py already owns the basename.)
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from framework.state_rows import vm_record
from pyro_mcp.state.schema import VM_COLUMNS
from pyro_mcp.state.store import StateStore


def test_insert_get_list_update_delete(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    assert store.get_vm("nope") is None
    assert store.list_vms() == []
    store.insert_vm(vm_record("b", created_at=2.0))
    store.insert_vm(vm_record("a", created_at=1.0, owner_pid=123, owner_start=456))
    row = store.get_vm("a")
    assert row is not None
    assert set(row) == set(VM_COLUMNS)
    assert (row["owner_pid"], row["owner_start"], row["supervisor_pid"]) == (123, 456, None)
    assert row["network_enabled"] == 0  # the column default
    assert [r["vm_id"] for r in store.list_vms()] == ["a", "b"]  # by creation time

    store.update_vm("a", state="stopped", stop_reason="why", supervisor_pid=None)
    row = store.get_vm("a")
    assert row is not None and (row["state"], row["stop_reason"]) == ("stopped", "why")
    store.update_vm("missing", state="stopped")  # no row: nothing happens
    assert store.get_vm("missing") is None

    assert store.delete_vm("a") is True
    assert store.delete_vm("a") is False
    assert [r["vm_id"] for r in store.list_vms()] == ["b"]


def test_a_duplicate_vm_id_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.insert_vm(vm_record("x"))
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_vm(vm_record("x"))


def test_unknown_fields_are_refused_before_any_sql(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.insert_vm(vm_record("x"))
    with pytest.raises(KeyError, match="nonsense"):
        store.update_vm("x", state="stopped", nonsense=1)
    row = store.get_vm("x")
    assert row is not None and row["state"] == "created"


def test_insert_ignores_keys_that_are_not_columns(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.insert_vm(vm_record("x", not_a_column="ignored"))
    assert store.get_vm("x") is not None


def test_a_failed_transaction_rolls_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.insert_vm(vm_record("x"))
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("UPDATE vms SET state = 'started' WHERE vm_id = 'x'")
        raise RuntimeError("boom")
    row = store.get_vm("x")
    assert row is not None and row["state"] == "created"


def test_the_database_is_in_wal_mode_in_a_private_directory(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "state"
    store = StateStore(root)
    store.insert_vm(vm_record("x"))
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert store.path == root / "state.sqlite3"
    assert store.vm_dir("x") == root / "vms" / "x"
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_second_store_object_sees_the_first_ones_changes(tmp_path: Path) -> None:
    one, two = StateStore(tmp_path), StateStore(tmp_path)
    one.insert_vm(vm_record("x"))
    two.update_vm("x", state="started")
    row = one.get_vm("x")
    assert row is not None and row["state"] == "started"


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pyro_mcp.state.store import StateStore

    root, tag, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    store = StateStore(root)
    while not (root / "go").exists():
        time.sleep(0.001)
    for i in range(rounds):
        now = time.time()
        store.insert_vm({
            "vm_id": f"{tag}-{i}", "environment": "e", "environment_version": "1",
            "vcpu_count": 1, "mem_mib": 256, "ttl_seconds": 60, "created_at": now,
            "expires_at": now + 60, "state": "created", "execution_mode": "pending",
            "vm_dir": "/nowhere",
        })
        store.update_vm(f"{tag}-{i}", state="started", supervisor_pid=i)
        # A read-modify-write of a shared row: BEGIN IMMEDIATE must serialise these.
        with store.transaction() as conn:
            (count,) = conn.execute("SELECT mem_mib FROM vms WHERE vm_id = 'shared'").fetchone()
            conn.execute("UPDATE vms SET mem_mib = ? WHERE vm_id = 'shared'", (count + 1,))
    """
)


def test_two_processes_write_at_once_without_errors_or_lost_updates(tmp_path: Path) -> None:
    root = tmp_path / "state"
    store = StateStore(root)
    store.insert_vm(vm_record("shared", mem_mib=0))
    rounds = 150
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root), tag, str(rounds)],
            env=env,
            stderr=subprocess.PIPE,
        )
        for tag in ("p", "q")
    ]
    (root / "go").touch()
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err.decode()
    rows = {row["vm_id"]: row for row in store.list_vms()}
    assert len(rows) == 2 * rounds + 1
    for tag in ("p", "q"):
        for i in range(rounds):
            assert (rows[f"{tag}-{i}"]["state"], rows[f"{tag}-{i}"]["supervisor_pid"]) == (
                "started",
                i,
            )
    assert rows["shared"]["mem_mib"] == 2 * rounds
