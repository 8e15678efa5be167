"""The state store: SQLite in WAL mode, so separate `pyro` processes see each other's VMs.

Every change is one short `BEGIN IMMEDIATE` transaction; `busy_timeout` makes concurrent
writers wait instead of failing. Rows hold only what other processes must know; a VM's files
live in its own directory. Only pyro_mcp.state speaks SQL (tests/state/test_sql_boundary.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyro_mcp import paths
from pyro_mcp.state import schema
from pyro_mcp.state.schema import COMMAND_COLUMNS, VM_COLUMNS, WORKSPACE_COLUMNS

_TABLES = {
    "vms": ("vm_id", VM_COLUMNS),
    "workspaces": ("workspace_id", WORKSPACE_COLUMNS),
    "workspace_commands": ("workspace_id", COMMAND_COLUMNS),
}


class StateStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or paths.state_dir()
        self.path = self.root / "state.sqlite3"
        # One connection per thread and store: opening one and checking its schema version
        # cost more than the queries on the VM start path.
        self._local = threading.local()

    def vm_dir(self, vm_id: str) -> Path:
        return self.root / "vms" / vm_id

    def workspace_dir(self, workspace_id: str) -> Path:
        return self.root / "workspaces" / workspace_id

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
        try:
            schema.migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.connect() as conn, schema.immediate(conn):
            yield conn

    def insert_vm(self, record: dict[str, Any]) -> None:
        self.insert("vms", record)

    def get_vm(self, vm_id: str) -> dict[str, Any] | None:
        return self.get("vms", vm_id)

    def list_vms(self) -> list[dict[str, Any]]:
        with self.connect() as conn:
            rows = conn.execute("SELECT * FROM vms ORDER BY created_at").fetchall()
        return [dict(row) for row in rows]

    def update_vm(self, vm_id: str, **fields: Any) -> None:
        self.update("vms", vm_id, **fields)

    def delete_vm(self, vm_id: str) -> bool:
        with self.transaction() as conn:
            cursor = conn.execute("DELETE FROM vms WHERE vm_id = ?", (vm_id,))
        return cursor.rowcount > 0

    # --- any table with a single-column key ------------------------------------------------

    def insert(self, table: str, record: dict[str, Any]) -> None:
        keys = [k for k in _TABLES[table][1] if k in record]
        sql = f"INSERT INTO {table} ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})"
        with self.transaction() as conn:
            conn.execute(sql, [record[k] for k in keys])

    def get(self, table: str, key: str) -> dict[str, Any] | None:
        key_column = _TABLES[table][0]
        with self.connect() as conn:
            row = conn.execute(f"SELECT * FROM {table} WHERE {key_column} = ?", (key,)).fetchone()
        return dict(row) if row is not None else None

    def update(self, table: str, key: str, **fields: Any) -> None:
        self.update_where(table, {_TABLES[table][0]: key}, **fields)

    def update_where(self, table: str, where: dict[str, Any], **fields: Any) -> None:
        """Set `fields` on the rows whose columns equal `where`."""
        columns = _TABLES[table][1]
        unknown = (set(fields) | set(where)) - set(columns)
        if unknown:
            raise KeyError(f"unknown {table} fields: {sorted(unknown)}")
        assignments = ", ".join(f"{k} = ?" for k in fields)
        condition = " AND ".join(f"{k} = ?" for k in where)
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE {table} SET {assignments} WHERE {condition}",
                [*fields.values(), *where.values()],
            )
