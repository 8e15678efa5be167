"""The CLI imports only what its command needs: no MCP stack outside `pyro mcp serve`.

Each case runs `main(argv)` in a fresh interpreter (the venv's), which writes down, after
every command, which modules it had loaded by then; the process exits through `finally`
whatever the command did, so a crash still leaves its module list behind.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.cli.main import build_parser

# The MCP SDK and what it brings along; none of it is needed to parse or to call the SDK. Nor
# are the libraries of guest networking, which only a networked VM's supervisor loads.
FORBIDDEN = ("mcp", "mcp_types", "pydantic", "pydantic_core", "anyio", "httpx", "starlette",
             "uvicorn", "sse_starlette", "rich", "dns", "pyroute2")  # fmt: skip

PROBE = """
import json, sys
report, runs, done = sys.argv[1], json.loads(sys.argv[2]), []
try:
    from pyro_mcp.cli.main import main
    for argv in runs:
        code = main(argv)
        done.append({"argv": argv, "code": code, "modules": sorted(sys.modules)})
finally:
    with open(report, "w") as handle:
        json.dump(done, handle)
"""

NO_SUCH_ID = "0123456789ab"


def run_probe(tmp_path: Path, runs: list[list[str]]) -> list[dict[str, Any]]:
    """Run `runs` through `main` in one fresh interpreter; one record per command."""
    report = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), json.dumps(runs)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    records: list[dict[str, Any]] = json.loads(report.read_text())
    assert [r["argv"] for r in records] == runs, done.stderr
    return records


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.partition(".")[0] in FORBIDDEN]


def assert_light(records: list[dict[str, Any]]) -> None:
    for record in records:
        assert heavy(record["modules"]) == [], f"after pyro {' '.join(record['argv'])}"


@pytest.mark.parametrize(
    ("argv", "code", "reaches_sdk"),
    [
        (["--help"], 0, False),
        (["run", "--help"], 0, False),
        (["workspace", "--help"], 0, False),
        (["workspace", "exec", "--help"], 0, False),
        (["mcp", "serve", "--help"], 0, False),
        (["env", "list"], 0, True),
        (["run", "no-such-env:1", "--", "true"], 1, True),
        (["workspace", "status", NO_SUCH_ID], 1, True),
        (["workspace", "exec", NO_SUCH_ID, "--", "true"], 1, True),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
)
def test_command_imports_no_mcp_stack(
    tmp_path: Path, argv: list[str], code: int, reaches_sdk: bool
) -> None:
    (record,) = run_probe(tmp_path, [argv])
    assert record["code"] == code
    # Proves the probe saw the command's own imports, not an empty interpreter.
    assert ("pyro_mcp.sdk" in record["modules"]) == reaches_sdk
    assert_light([record])


def leaf_paths(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
    """Every runnable command line prefix of the parser tree, e.g. ["workspace", "file", "read"]."""
    paths: list[list[str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                paths += leaf_paths(child, [*prefix, name])
    return paths or [prefix]


def test_every_help_page_is_light(tmp_path: Path) -> None:
    leaves = leaf_paths(build_parser(), [])
    assert ["workspace", "file", "read"] in leaves and ["mcp", "serve"] in leaves
    records = run_probe(tmp_path, [[*leaf, "--help"] for leaf in leaves])
    assert all(r["code"] == 0 for r in records)
    assert_light(records)


def test_every_workspace_command_reaches_the_sdk_light(tmp_path: Path) -> None:
    source = tmp_path / "seed"
    source.mkdir()
    ws = NO_SUCH_ID
    runs = [
        ["workspace", "create", "no-such-env:1"],
        ["workspace", "list"],
        ["workspace", "update", ws, "--name", "x"],
        *[["workspace", verb, ws] for verb in ("status", "logs", "delete", "stop", "start")],
        ["workspace", "reset", ws],
        ["workspace", "exec", ws, "--", "true"],
        ["workspace", "sync", "push", ws, str(source)],
        ["workspace", "export", ws, "/workspace/a", "--output", str(tmp_path / "out")],
        ["workspace", "diff", ws],
        ["workspace", "patch", "apply", ws, "--patch", "x"],
        ["workspace", "file", "list", ws],
        ["workspace", "file", "read", ws, "/workspace/a"],
        ["workspace", "file", "write", ws, "/workspace/a", "--text", "x"],
        ["workspace", "shell", "open", ws],
        *[["workspace", "shell", verb, ws, "0123456789ab"] for verb in ("read", "close")],
        ["workspace", "shell", "write", ws, "0123456789ab", "--input", "x"],
        ["workspace", "shell", "signal", ws, "0123456789ab"],
        ["workspace", "shell", "resize", ws, "0123456789ab", "--cols", "80", "--rows", "24"],
        ["workspace", "service", "start", ws, "web", "--ready-file", "r", "--", "true"],
        ["workspace", "service", "list", ws],
        *[["workspace", "service", verb, ws, "web"] for verb in ("status", "logs", "stop")],
        *[["workspace", "snapshot", verb, ws, "s1"] for verb in ("create", "delete")],
        ["workspace", "snapshot", "list", ws],
        ["workspace", "disk", "export", ws, "--output", str(tmp_path / "disk.ext4")],
        ["workspace", "disk", "list", ws],
        ["workspace", "disk", "read", ws, "a"],
    ]
    covered = {tuple(argv[:3]) for argv in runs} | {tuple(argv[:2]) for argv in runs}
    for leaf in leaf_paths(build_parser(), []):
        assert leaf[0] != "workspace" or tuple(leaf) in covered, f"add a case for {leaf}"
    records = run_probe(tmp_path, runs)
    codes = {" ".join(r["argv"][:3]): r["code"] for r in records}
    assert codes.pop("workspace list") == 0
    assert set(codes.values()) == {1}, codes  # each one a clear error from the SDK
    assert "pyro_mcp.sdk" in records[0]["modules"]
    assert_light(records)
