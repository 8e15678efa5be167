"""Workspace rows: sequence numbers stay distinct under concurrent writers; history is kept."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

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


def test_stop_unchanged_stops_only_the_workspace_as_it_was_read(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    add_workspace(store)
    store.update("workspaces", "ws1", state="started", vm_id="vm1")
    read = store.get("workspaces", "ws1")
    assert read is not None
    store.update("workspaces", "ws1", vm_id="vm2")  # another call started a new VM meanwhile
    rows.stop_unchanged(store, read, "the VM is gone")
    now = store.get("workspaces", "ws1")
    assert now is not None and (now["state"], now["vm_id"]) == ("started", "vm2")
    rows.stop_unchanged(store, now, "the VM is gone")
    now = store.get("workspaces", "ws1")
    assert now is not None
    assert (now["state"], now["stop_reason"], now["vm_id"]) == ("stopped", "the VM is gone", None)


def test_count_reset_counts_and_stamps(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    add_workspace(store)
    rows.count_reset(store, "ws1", 5.0)
    rows.count_reset(store, "ws1", 7.0)
    row = store.get("workspaces", "ws1")
    assert row is not None and (row["reset_count"], row["last_reset_at"]) == (2, 7.0)


def _add_label(root: str, key: str) -> None:
    store = StateStore(Path(root))

    def change(row: dict[str, Any]) -> tuple[str | None, str]:
        labels = json.loads(row["labels"])
        return row["name"], json.dumps({**labels, key: "x"}, sort_keys=True)

    rows.rename(store, "ws1", change)


def test_renames_in_several_processes_at_once_all_land(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    add_workspace(store)
    keys = [f"k{n}" for n in range(8)]
    procs = [multiprocessing.Process(target=_add_label, args=(str(tmp_path), k)) for k in keys]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    row = store.get("workspaces", "ws1")
    assert row is not None and set(json.loads(row["labels"])) == set(keys)


def test_a_rename_that_raises_writes_nothing_and_a_missing_workspace_is_a_lookup_error(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path)
    add_workspace(store)

    def refuse(row: dict[str, Any]) -> tuple[str | None, str]:
        raise ValueError("no change")

    with pytest.raises(ValueError):
        rows.rename(store, "ws1", refuse)
    with pytest.raises(LookupError):
        rows.rename(store, "nope", lambda row: (None, "{}"))
    row = store.get("workspaces", "ws1")
    assert row is not None and (row["name"], row["labels"]) == (None, "{}")
