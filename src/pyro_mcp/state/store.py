"""The state store: SQLite in WAL mode, so separate `pyro` processes see each other's VMs.

Every change is one short `BEGIN IMMEDIATE` transaction; `busy_timeout` makes concurrent
writers wait instead of failing. Rows hold only what other processes must know; a VM's files
live in its own directory.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyro_mcp import paths

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
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
    disk_mib INTEGER NOT NULL DEFAULT 0
);
"""

VM_COLUMNS = (
    "vm_id", "environment", "environment_version", "vcpu_count", "mem_mib", "ttl_seconds",
    "created_at", "expires_at", "state", "backend", "execution_mode", "vm_dir",
    "supervisor_pid", "supervisor_start", "owner_pid", "owner_start", "started_at",
    "stopped_at", "stop_reason", "network_enabled", "boot_mode", "boot_note", "disk_mib",
)  # fmt: skip


class StateStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or paths.state_dir()
        self.path = self.root / "state.sqlite3"
        # One connection per thread and store: opening one and running the schema script
        # cost more than the queries on the VM start path.
        self._local = threading.local()

    def vm_dir(self, vm_id: str) -> Path:
        return self.root / "vms" / vm_id

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or not self.path.exists():
            conn = self._open()
            self._local.conn = conn
        yield conn

    def _open(self) -> sqlite3.Connection:
        paths.ensure_private_dir(self.root)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL is still consistent after a crash; it only skips the fsync per
        # commit, which cost several milliseconds on every VM state change.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(_SCHEMA)
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def insert_vm(self, record: dict[str, Any]) -> None:
        keys = [k for k in VM_COLUMNS if k in record]
        sql = f"INSERT INTO vms ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})"
        with self.transaction() as conn:
            conn.execute(sql, [record[k] for k in keys])

    def get_vm(self, vm_id: str) -> dict[str, Any] | None:
        with self.connect() as conn:
            row = conn.execute("SELECT * FROM vms WHERE vm_id = ?", (vm_id,)).fetchone()
        return dict(row) if row is not None else None

    def list_vms(self) -> list[dict[str, Any]]:
        with self.connect() as conn:
            rows = conn.execute("SELECT * FROM vms ORDER BY created_at").fetchall()
        return [dict(row) for row in rows]

    def update_vm(self, vm_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(VM_COLUMNS)
        if unknown:
            raise KeyError(f"unknown VM fields: {sorted(unknown)}")
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as conn:
            conn.execute(f"UPDATE vms SET {assignments} WHERE vm_id = ?", [*fields.values(), vm_id])

    def delete_vm(self, vm_id: str) -> bool:
        with self.transaction() as conn:
            cursor = conn.execute("DELETE FROM vms WHERE vm_id = ?", (vm_id,))
        return cursor.rowcount > 0
