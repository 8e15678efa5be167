"""Schema versions: a fresh database, databases from before versions, one from a newer
pyro-mcp, and several processes opening an old database at once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from framework.waiting import wait_until
from pyro_mcp.errors import SystemFault
from pyro_mcp.state import schema
from pyro_mcp.state.schema import COMMAND_COLUMNS, VM_COLUMNS, WORKSPACE_COLUMNS
from pyro_mcp.state.store import StateStore

# The vms table as the first engine shipped it, before warm start added boot_mode/boot_note,
# disk VMs disk_mib, and workspaces disk_path/workspace_id (and their own two tables).
FIRST_VMS = """
CREATE TABLE vms (
    vm_id TEXT PRIMARY KEY,
    environment TEXT NOT NULL,
    environment_version TEXT NOT NULL,
    vcpu_count INTEGER NOT NULL,
    mem_mib INTEGER NOT NULL,
    ttl_seconds INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    state TEXT NOT NULL,
    backend TEXT,
    execution_mode TEXT NOT NULL,
    vm_dir TEXT NOT NULL,
    supervisor_pid INTEGER,
    supervisor_start INTEGER,
    owner_pid INTEGER,
    owner_start INTEGER,
    started_at REAL,
    stopped_at REAL,
    stop_reason TEXT,
    network_enabled INTEGER NOT NULL DEFAULT 0
)"""
# The vms table just before workspaces: what `_add_missing_columns` then completed on open.
BEFORE_WORKSPACES = FIRST_VMS.replace(
    "network_enabled INTEGER NOT NULL DEFAULT 0",
    "network_enabled INTEGER NOT NULL DEFAULT 0,\n    boot_mode TEXT,\n    boot_note TEXT,\n"
    "    disk_mib INTEGER NOT NULL DEFAULT 0",
)
OLD_VM = (
    "INSERT INTO vms (vm_id, environment, environment_version, vcpu_count, mem_mib, "
    "ttl_seconds, created_at, expires_at, state, execution_mode, vm_dir, stop_reason) VALUES "
    "('old', 'debian:12', '1.0.0', 1, 1024, 600, 1.0, 601.0, 'stopped', 'qemu-tcg', "
    "'/gone', 'ttl_expired')"
)


def make_database(root: Path, *statements: str, version: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "state.sqlite3"
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    return path


def columns(store: StateStore, table: str) -> tuple[str, ...]:
    with store.connect() as conn:
        return tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))


def version_of(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def current_main_statements() -> list[str]:
    """The three tables exactly as the unversioned code made them, with a row in each."""
    ddl = [statement.replace("IF NOT EXISTS ", "") for statement in schema._V1_TABLES]
    return [
        *ddl,
        OLD_VM,
        "INSERT INTO workspaces (workspace_id, environment, environment_version, vcpu_count, "
        "mem_mib, ttl_seconds, created_at, last_activity_at, expires_at, state, workspace_dir, "
        "command_count) VALUES ('ws', 'debian:12', '1.0.0', 1, 1024, 600, 1.0, 2.0, 601.0, "
        "'stopped', '/ws', 1)",
        "INSERT INTO workspace_commands (workspace_id, sequence, command, cwd, started_at) "
        "VALUES ('ws', 1, 'make', '/workspace', 1.5)",
    ]


def test_a_fresh_database_gets_the_current_schema_and_version(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    assert store.list_vms() == []
    assert columns(store, "vms") == VM_COLUMNS
    assert columns(store, "workspaces") == WORKSPACE_COLUMNS
    assert columns(store, "workspace_commands") == COMMAND_COLUMNS
    assert version_of(store.path) == schema.current_version()
    with store.connect() as conn:
        assert schema.migrate(conn, store.path) == []  # up to date: nothing runs again


@pytest.mark.parametrize("old_vms", [FIRST_VMS, BEFORE_WORKSPACES], ids=["first", "pre-ws"])
def test_an_unversioned_database_gains_the_missing_columns_and_tables(
    tmp_path: Path, old_vms: str
) -> None:
    make_database(tmp_path, old_vms, OLD_VM)
    store = StateStore(tmp_path)
    assert columns(store, "vms") == VM_COLUMNS  # the same order as a fresh database's
    assert columns(store, "workspaces") == WORKSPACE_COLUMNS
    assert columns(store, "workspace_commands") == COMMAND_COLUMNS
    assert version_of(store.path) == schema.current_version()
    old = store.get_vm("old")
    assert old is not None and (old["stop_reason"], old["disk_mib"]) == ("ttl_expired", 0)
    assert (old["boot_mode"], old["disk_path"], old["workspace_id"]) == (None, None, None)
    store.update_vm("old", disk_path="/d", workspace_id="ws")
    row = store.get_vm("old")
    assert row is not None and (row["disk_path"], row["workspace_id"]) == ("/d", "ws")


def test_a_database_from_the_current_unversioned_code_keeps_every_row(tmp_path: Path) -> None:
    make_database(tmp_path, *current_main_statements())
    store = StateStore(tmp_path)
    assert columns(store, "vms") == VM_COLUMNS
    assert version_of(store.path) == schema.current_version()
    assert [row["vm_id"] for row in store.list_vms()] == ["old"]
    workspace = store.get("workspaces", "ws")
    assert workspace is not None and workspace["command_count"] == 1
    with store.connect() as conn:
        (command,) = conn.execute("SELECT command FROM workspace_commands").fetchone()
    assert command == "make"


def test_a_database_from_a_newer_pyro_is_refused_and_left_alone(tmp_path: Path) -> None:
    newer = schema.current_version() + 1
    path = make_database(tmp_path, "CREATE TABLE future (x)", version=newer)
    with pytest.raises(SystemFault, match=f"schema version {newer}, newer than") as caught:
        StateStore(tmp_path).list_vms()
    assert str(path) in str(caught.value)
    assert caught.value.hint is not None
    assert "upgrade pyro-mcp" in caught.value.hint and "PYRO_STATE_DIR" in caught.value.hint
    conn = sqlite3.connect(path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"future"} and version_of(path) == newer


def test_a_failed_step_leaves_the_version_and_the_tables_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_database(tmp_path, BEFORE_WORKSPACES, OLD_VM)

    def broken(conn: sqlite3.Connection) -> None:
        schema._v1(conn)
        raise RuntimeError("the disk filled up")

    monkeypatch.setattr(schema, "MIGRATIONS", (broken,))
    with pytest.raises(RuntimeError, match="filled up"):
        StateStore(tmp_path).list_vms()
    assert version_of(path) == 0
    conn = sqlite3.connect(path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    have = {row[1] for row in conn.execute("PRAGMA table_info(vms)")}
    conn.close()
    assert "workspaces" not in tables and "disk_path" not in have


def test_a_process_that_read_the_old_version_does_not_migrate_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the re-check under the write lock is for: both read version 0, one wins."""
    make_database(tmp_path, BEFORE_WORKSPACES, OLD_VM)
    applied: list[str] = []
    real_step, real_apply = schema.MIGRATIONS[0], schema._apply

    def counted(conn: sqlite3.Connection) -> None:
        applied.append(threading.current_thread().name)
        real_step(conn)

    read_old, resume = threading.Event(), threading.Event()

    def late_apply(conn: sqlite3.Connection, number: int) -> bool:
        if threading.current_thread().name == "late":  # has read version 0 by now
            read_old.set()
            resume.wait(60)
        return real_apply(conn, number)

    monkeypatch.setattr(schema, "MIGRATIONS", (counted,))
    monkeypatch.setattr(schema, "_apply", late_apply)
    seen: list[list[str]] = []
    late = threading.Thread(
        target=lambda: seen.append([r["vm_id"] for r in StateStore(tmp_path).list_vms()]),
        name="late",
    )
    late.start()
    assert read_old.wait(60)
    StateStore(tmp_path).list_vms()  # the other opener migrates meanwhile
    resume.set()
    late.join(60)
    assert applied == ["MainThread"] and seen == [["old"]]
    assert version_of(tmp_path / "state.sqlite3") == schema.current_version()


_OPENER = textwrap.dedent(
    """
    import json, sqlite3, sys, time
    from pathlib import Path
    from pyro_mcp.state import schema

    path, go, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    ready.touch()
    while not go.exists():
        time.sleep(0.001)
    print(json.dumps(schema.migrate(conn, path)))
    """
)


def test_processes_opening_an_old_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = make_database(tmp_path, BEFORE_WORKSPACES, OLD_VM)
    go = tmp_path / "go"
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, str(path), str(go), str(tmp_path / f"ready-{n}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    wait_until(lambda: len(list(tmp_path.glob("ready-*"))) == 4, "the openers to connect", 60)
    go.touch()
    applied = []
    for opener in openers:
        out, err = opener.communicate(timeout=120)
        assert opener.returncode == 0, err
        applied += json.loads(out)
    assert sorted(applied) == list(range(1, schema.current_version() + 1))
    store = StateStore(tmp_path)
    assert columns(store, "vms") == VM_COLUMNS and store.get_vm("old") is not None
