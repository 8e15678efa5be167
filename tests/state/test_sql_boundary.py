"""Only pyro_mcp.state speaks SQL: no other module imports sqlite3, holds SQL text, or takes
the store's connection to run statements of its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pyro_mcp

PACKAGE = Path(pyro_mcp.__file__).parent
STATE = PACKAGE / "state"
SQL_TEXT = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|PRAGMA|BEGIN|COMMIT|ROLLBACK)\s"
)
# The store's ways to a raw connection; everything else it offers is a named operation.
CONNECTION_METHODS = {"connect", "transaction"}


def _is_store(node: ast.expr) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name.endswith("store")


def violations(source: str) -> list[str]:
    """What in `source` (a module outside pyro_mcp.state) would speak SQL, by line."""
    return [
        f"line {node.lineno}: {what}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.expr | ast.stmt) and (what := _speaks_sql(node))
    ]


def _speaks_sql(node: ast.AST) -> str | None:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name.split(".")[0] == "sqlite3"]
        return f"import {names[0]}" if names else None
    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlite3":
        return f"from {node.module} import ..."
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return f"SQL text {node.value[:40]!r}" if SQL_TEXT.match(node.value) else None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CONNECTION_METHODS
        and _is_store(node.func.value)
    ):
        return f"the store's {node.func.attr}()"
    return None


def test_the_check_finds_each_way_of_speaking_sql() -> None:
    source = (
        "import sqlite3\n"
        "from sqlite3 import Row\n"
        "with self.store.transaction() as conn:\n"
        "    conn.execute('UPDATE vms SET state = ?', (1,))\n"
        "with store.connect() as conn:\n"
        "    conn.execute(f'SELECT * FROM {table}')\n"
    )
    assert len(violations(source)) == 6
    harmless = (
        "import sqlite3_helpers_of_no_interest as h\n"
        "launch.connect(vm_dir)\n"
        "store.update_vm(vm_id, state='stopped')\n"
        "qmp.execute('query-migrate')\n"
        "'Update the workspace'\n"
    )
    assert violations(harmless) == []


def test_no_module_outside_pyro_mcp_state_speaks_sql() -> None:
    modules = [p for p in PACKAGE.rglob("*.py") if STATE not in p.parents]
    assert len(modules) > 50  # the whole package was found
    bad = {
        str(path.relative_to(PACKAGE)): found
        for path in modules
        if (found := violations(path.read_text()))
    }
    assert bad == {}, "SQL belongs in pyro_mcp.state: give it a named function there"
