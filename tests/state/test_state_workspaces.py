"""Workspace rows: sequence numbers stay distinct under concurrent writers; history is kept."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from pyro_mcp.state import workspaces as rows
from pyro_mcp.state.store import StateStore


def add_workspace(store: StateStore, workspace_id: str = "ws1") -> None:
    now = time.time()
    store.insert(
        "workspaces",
        {
            "workspace_id": workspace_id,
            "environment": "debian:12",
            "environment_version": "1",
            "vcpu_count": 1,
            "mem_mib": 1024,
            "ttl_seconds": 600,
            "created_at": now,
            "last_activity_at": now,
            "expires_at": now + 600,
            "state": "stopped",
            "workspace_dir": "/nowhere",
        },
    )


def _take(root: str, count: int, out: multiprocessing.Queue[int]) -> None:
    store = StateStore(Path(root))
    for _ in range(count):
        out.put(rows.begin_command(store, "ws1", "true", "/workspace", time.time()))


def test_processes_taking_sequence_numbers_at_once_never_share_one(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    add_workspace(store)
    queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_take, args=(str(tmp_path), 25, queue)) for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    taken = [queue.get(timeout=60) for _ in range(100)]
    for proc in procs:
        proc.join(60)
    assert sorted(taken) == list(range(1, 101))
    assert [c["sequence"] for c in rows.list_commands(store, "ws1")] == list(range(1, 101))
    workspace = store.get("workspaces", "ws1")
    assert workspace is not None and workspace["command_count"] == 100


def test_a_command_is_recorded_before_it_finishes_and_completed_after(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    add_workspace(store)
    seq = rows.begin_command(store, "ws1", "make", "/workspace", 100.0)
    running = rows.last_command(store, "ws1")
    assert running is not None and (running["sequence"], running["exit_code"]) == (seq, None)
    rows.finish_command(store, "ws1", seq, exit_code=2, duration_ms=5, recorded_at=101.0)
    done = rows.last_command(store, "ws1")
    assert done is not None and (done["exit_code"], done["duration_ms"]) == (2, 5)
    with pytest.raises(KeyError):
        rows.finish_command(store, "ws1", seq, no_such_column=1)


def test_a_missing_workspace_takes_no_number_and_delete_drops_the_history(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path)
    with pytest.raises(LookupError):
        rows.begin_command(store, "nope", "true", "/workspace", 1.0)
    add_workspace(store)
    rows.begin_command(store, "ws1", "true", "/workspace", 1.0)
    assert rows.delete_workspace(store, "ws1") is True
    assert rows.list_commands(store, "ws1") == [] and rows.list_workspaces(store) == []
    assert rows.delete_workspace(store, "ws1") is False


def test_an_older_state_file_gains_the_new_vm_columns(tmp_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(tmp_path / "state.sqlite3")
    conn.execute("CREATE TABLE vms (vm_id TEXT PRIMARY KEY, environment TEXT)")
    conn.commit()
    conn.close()
    store = StateStore(tmp_path)
    with store.connect() as fresh:
        columns = {row[1] for row in fresh.execute("PRAGMA table_info(vms)")}
    assert {"disk_path", "workspace_id"} <= columns
