"""The state database's schema and its versions: `PRAGMA user_version` counts the steps applied.

A step runs in one `BEGIN IMMEDIATE` transaction together with the version bump, and reads the
version again under that write lock, so of two processes opening an old database at once only
one applies it. A fresh database runs every step; one from a newer pyro-mcp is refused.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from pyro_mcp.errors import SystemFault
from pyro_mcp.paths import STATE_ENV

VM_COLUMNS = (
    "vm_id", "environment", "environment_version", "vcpu_count", "mem_mib", "ttl_seconds",
    "created_at", "expires_at", "state", "backend", "execution_mode", "vm_dir",
    "supervisor_pid", "supervisor_start", "owner_pid", "owner_start", "started_at",
    "stopped_at", "stop_reason", "network_enabled", "boot_mode", "boot_note", "disk_mib",
    "disk_path", "workspace_id", "net_slot", "allow_hosts",
)  # fmt: skip
WORKSPACE_COLUMNS = (
    "workspace_id", "name", "labels", "environment", "environment_version", "vcpu_count",
    "mem_mib", "ttl_seconds", "created_at", "last_activity_at", "expires_at", "state",
    "stop_reason", "vm_id", "workspace_dir", "seed", "execution_mode", "command_count",
    "reset_count", "last_reset_at", "network_policy", "allow_hosts",
)  # fmt: skip
COMMAND_COLUMNS = (
    "workspace_id", "sequence", "command", "cwd", "started_at", "recorded_at", "exit_code",
    "duration_ms", "timed_out", "stdout_truncated", "stderr_truncated", "execution_mode", "error",
)  # fmt: skip
SNAPSHOT_COLUMNS = ("workspace_id", "snapshot_name", "created_at", "entry_count", "bytes_written")
SERVICE_COLUMNS = (
    "workspace_id", "service_name", "run_id", "vm_id", "state", "command", "cwd", "started_at",
    "ended_at", "exit_code", "pid", "readiness", "ready_at", "stop_reason", "published_ports",
    "execution_mode", "recorded_at",
)  # fmt: skip

# Version 1: the tables as they stood when versions began.
_V1_TABLES = (
    """CREATE TABLE IF NOT EXISTS vms (
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
    network_enabled INTEGER NOT NULL DEFAULT 0,
    boot_mode TEXT,
    boot_note TEXT,
    disk_mib INTEGER NOT NULL DEFAULT 0,
    disk_path TEXT,
    workspace_id TEXT
)""",
    """CREATE TABLE IF NOT EXISTS workspaces (
    workspace_id TEXT PRIMARY KEY,
    name TEXT,
    labels TEXT NOT NULL DEFAULT '{}',
    environment TEXT NOT NULL,
    environment_version TEXT NOT NULL,
    vcpu_count INTEGER NOT NULL,
    mem_mib INTEGER NOT NULL,
    ttl_seconds INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_activity_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    state TEXT NOT NULL,
    stop_reason TEXT,
    vm_id TEXT,
    workspace_dir TEXT NOT NULL,
    seed TEXT NOT NULL DEFAULT '{}',
    execution_mode TEXT NOT NULL DEFAULT 'pending',
    command_count INTEGER NOT NULL DEFAULT 0,
    reset_count INTEGER NOT NULL DEFAULT 0,
    last_reset_at REAL
)""",
    """CREATE TABLE IF NOT EXISTS workspace_commands (
    workspace_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    command TEXT NOT NULL,
    cwd TEXT NOT NULL,
    started_at REAL NOT NULL,
    recorded_at REAL,
    exit_code INTEGER,
    duration_ms INTEGER,
    timed_out INTEGER,
    stdout_truncated INTEGER,
    stderr_truncated INTEGER,
    execution_mode TEXT,
    error TEXT,
    PRIMARY KEY (workspace_id, sequence)
)""",
)
# Columns that unversioned databases (user_version 0) may lack: before versions, a pyro that
# knew a column added it when it opened the database, and some never got that far.
_UNVERSIONED_ADDITIONS = (
    ("vms", "boot_mode", "TEXT"),
    ("vms", "boot_note", "TEXT"),
    ("vms", "disk_mib", "INTEGER NOT NULL DEFAULT 0"),
    ("vms", "disk_path", "TEXT"),
    ("vms", "workspace_id", "TEXT"),
)


def _v1(conn: sqlite3.Connection) -> None:
    """Create the tables, or complete those of a database from before versions."""
    for statement in _V1_TABLES:
        conn.execute(statement)
    for table, column, kind in _UNVERSIONED_ADDITIONS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _v2(conn: sqlite3.Connection) -> None:
    """Guest networking: a VM's uplink slot (unique while held) and allowlist, a workspace's
    policy and allowlist, and where the next slot search starts."""
    conn.execute("ALTER TABLE vms ADD COLUMN net_slot INTEGER")
    conn.execute("ALTER TABLE vms ADD COLUMN allow_hosts TEXT")
    conn.execute("CREATE UNIQUE INDEX vms_net_slot ON vms (net_slot) WHERE net_slot IS NOT NULL")
    conn.execute("ALTER TABLE workspaces ADD COLUMN network_policy TEXT NOT NULL DEFAULT 'off'")
    conn.execute("ALTER TABLE workspaces ADD COLUMN allow_hosts TEXT NOT NULL DEFAULT '[]'")
    conn.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")


def _v3(conn: sqlite3.Connection) -> None:
    """Services: the host's record of each workspace service's last run, so that a stop,
    start or reset of the workspace shows them stopped instead of forgetting them."""
    conn.execute(
        """CREATE TABLE workspace_services (
    workspace_id TEXT NOT NULL,
    service_name TEXT NOT NULL,
    run_id TEXT NOT NULL,
    vm_id TEXT,
    state TEXT NOT NULL,
    command TEXT NOT NULL,
    cwd TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    exit_code INTEGER,
    pid INTEGER,
    readiness TEXT,
    ready_at REAL,
    stop_reason TEXT,
    published_ports TEXT NOT NULL DEFAULT '[]',
    execution_mode TEXT,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (workspace_id, service_name)
)"""
    )


def _v4(conn: sqlite3.Connection) -> None:
    """Named snapshots of a workspace's disk: what each one held when it was taken (the
    snapshot itself lives in the workspace's disk image)."""
    conn.execute(
        """CREATE TABLE workspace_snapshots (
    workspace_id TEXT NOT NULL,
    snapshot_name TEXT NOT NULL,
    created_at REAL NOT NULL,
    entry_count INTEGER NOT NULL,
    bytes_written INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, snapshot_name)
)"""
    )


# In order: step N takes a database from version N-1 to N. Append only; never edit a step.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1, _v2, _v3, _v4)


def current_version() -> int:
    return len(MIGRATIONS)


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, path: Path) -> list[int]:
    """Bring the database up to this code's version; returns the versions this call applied."""
    applied: list[int] = []
    while (version := user_version(conn)) < current_version():
        if _apply(conn, version + 1):
            applied.append(version + 1)
    if version > current_version():
        raise _too_new(version, path)
    return applied


def _apply(conn: sqlite3.Connection, number: int) -> bool:
    """Run step `number` unless another process did since this one read the version."""
    with immediate(conn):
        due = user_version(conn) < number
        if due:
            MIGRATIONS[number - 1](conn)
            conn.execute(f"PRAGMA user_version = {number:d}")
    return due


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One `BEGIN IMMEDIATE` transaction: the write lock from the start, rolled back on error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _too_new(version: int, path: Path) -> SystemFault:
    return SystemFault(
        f"the state database {path} has schema version {version}, newer than this pyro-mcp "
        f"knows ({current_version()}): a newer pyro-mcp wrote it",
        hint=f"upgrade pyro-mcp, or set {STATE_ENV} to another directory to keep both",
    )
