"""The MCP face without VMs: profiles, schemas, allowed roots, bounded results, HTTP auth."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.mcp import http
from pyro_mcp.mcp.bounds import bound
from pyro_mcp.mcp.profiles import PROFILES, WORKSPACE_CORE, WORKSPACE_FULL
from pyro_mcp.mcp.roots import Roots, default_roots
from pyro_mcp.mcp.server import create_server
from pyro_mcp.sdk import Pyro


def tools_of(profile: str) -> dict[str, Any]:
    server = create_server(Pyro(), profile=profile)
    return {tool.name: tool for tool in anyio.run(server.list_tools)}


def test_profiles_offer_exactly_their_tools() -> None:
    assert list(tools_of("vm-run")) == ["vm_run"]
    core = tools_of("workspace-core")
    assert len(core) == 16 and set(core) == set(WORKSPACE_CORE)
    full = tools_of("workspace-full")
    assert set(full) > set(core) and len(full) == len(WORKSPACE_FULL)
    for tool in full.values():
        assert len(tool.description or "") > 30, tool.name


def test_schemas_follow_the_contract_defaults() -> None:
    core = tools_of("workspace-core")
    run = core["vm_run"].input_schema
    assert run["required"] == ["environment", "command"]
    defaults = {k: v.get("default") for k, v in run["properties"].items()}
    assert defaults == {
        "environment": None, "command": None, "vcpu_count": 1, "mem_mib": 1024,
        "timeout_seconds": 30, "ttl_seconds": 600, "network": False,
        "allow_host_compat": False,
    }  # fmt: skip
    read = core["workspace_file_read"].input_schema["properties"]
    assert read["max_bytes"]["default"] == 65536
    assert core["workspace_reset"].input_schema["properties"]["snapshot"]["default"] == "baseline"
    assert core["workspace_sync_push"].input_schema["properties"]["dest"]["default"] == (
        "/workspace"
    )


def test_only_the_full_profile_offers_the_network_knobs() -> None:
    knobs = {"network_policy", "allow_hosts", "clear_allow_hosts"}
    core, full = tools_of("workspace-core"), tools_of("workspace-full")
    for tool in ("workspace_create", "workspace_update"):
        assert not knobs & set(core[tool].input_schema["properties"]), tool
    create = full["workspace_create"].input_schema["properties"]
    assert create["network_policy"]["default"] == "off" and "allow_hosts" in create
    update = full["workspace_update"].input_schema["properties"]
    assert {"allow_hosts", "clear_allow_hosts"} <= set(update)


def test_only_the_full_profile_offers_secrets() -> None:
    core, full = tools_of("workspace-core"), tools_of("workspace-full")
    for tool, knob in (("workspace_create", "secrets"), ("workspace_exec", "secret_env")):
        assert knob not in core[tool].input_schema["properties"], tool
        assert knob in full[tool].input_schema["properties"], tool
    for tool in ("shell_open", "service_start"):
        assert "secret_env" in full[tool].input_schema["properties"], tool


def test_a_secret_file_must_lie_inside_the_roots(tmp_path: Path) -> None:
    from pyro_mcp.mcp.tools import PyroTools

    inside = tmp_path / "root" / "key"
    inside.parent.mkdir()
    inside.write_text("v")
    (tmp_path / "root" / "out").symlink_to("/etc/hostname")
    tools = PyroTools(Pyro(), Roots([tmp_path / "root"]))
    for path in ("/etc/hostname", str(tmp_path / "root" / "out"), "../key"):
        with pytest.raises(Exception, match="outside the host paths"):
            tools._secret_files([{"name": "K", "file_path": path}])
    checked = tools._secret_files(
        [{"name": "A", "value": "x"}, {"name": "K", "file_path": str(inside)}]
    )
    assert checked == [{"name": "A", "value": "x"}, {"name": "K", "file_path": str(inside)}]
    create = tools.table()["workspace_create"][0]
    with pytest.raises(Exception, match="outside the host paths"):
        create(environment="debian:12", secrets=[{"name": "K", "file_path": "/etc/passwd"}])


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="workspace-core"):
        create_server(Pyro(), profile="everything")


def test_a_pyro_error_becomes_a_tool_error_with_the_cli_message() -> None:
    server = create_server(Pyro(), profile="workspace-core")

    async def call() -> Any:
        return await server._handle_call_tool(  # the same path a client request takes
            None,  # type: ignore[arg-type]
            type("P", (), {"name": "workspace_status", "arguments": {"workspace_id": "nope"}})(),  # type: ignore[arg-type]
        )

    result = anyio.run(call)
    assert result.is_error
    text = result.content[0].text
    assert "workspace 'nope' does not exist" in text and "pyro workspace list" in text


def test_roots_refuse_paths_outside_and_links_leading_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "out").symlink_to("/etc")
    roots = Roots([root])
    assert roots.existing("seed_path", str(root / "sub")) == str(root / "sub")
    assert roots.new("output_path", str(root / "new" / "deeper")) == str(root / "new" / "deeper")
    for bad in ("/etc", str(root / "out"), str(root / "sub" / ".." / ".." / "x"), "~"):
        with pytest.raises(InvalidArgumentError, match="--allow-path"):
            roots.existing("seed_path", bad)
    for bad in ("/tmp/elsewhere", str(root / "out" / "new"), str(root / ".." / "x")):
        with pytest.raises(InvalidArgumentError, match="outside the host paths"):
            roots.new("output_path", bad)
    os.chdir(root)
    assert Roots([root]).existing("seed_path", "sub") == str(root / "sub")


def test_the_filesystem_root_is_never_a_default_root(tmp_path: Path) -> None:
    assert default_roots("/", []).paths == ()
    with pytest.raises(InvalidArgumentError, match="none were given"):
        default_roots("/", []).existing("seed_path", "/home")
    assert default_roots("/", [tmp_path]).paths == (tmp_path.resolve(),)
    assert default_roots(str(tmp_path), ["/srv"]).paths == (tmp_path.resolve(), Path("/srv"))


def test_big_results_are_cut_largest_string_first() -> None:
    small = {"stdout": "x" * 10}
    assert bound(small) is small
    big = {"stdout": "a" * 500_000, "stderr": "b" * 2000, "entries": [{"p": "c" * 50}] * 10}
    cut = bound(big, limit=100_000)
    assert len(json.dumps(cut)) <= 100_000 and cut["result_truncated"] is True
    assert (
        cut["stdout"].startswith("a" * 1000) and "more characters cut by pyro mcp" in cut["stdout"]
    )
    assert cut["stderr"] == "b" * 2000 and cut["entries"] == big["entries"]
    assert len(big["stdout"]) == 500_000  # the caller's dict is untouched


@pytest.mark.parametrize(
    ("host", "token", "no_auth", "message"),
    [
        ("127.0.0.1", None, False, "PYRO_MCP_TOKEN is not set"),
        ("0.0.0.0", None, True, "only allowed on a loopback address"),
        ("example.org", "t", True, "only allowed on a loopback address"),
    ],
)
def test_http_refuses_to_serve_without_a_token(
    host: str, token: str | None, no_auth: bool, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        http.check_auth(host, token, no_auth)


@pytest.mark.parametrize(
    ("host", "no_auth"), [("127.0.0.1", True), ("::1", True), ("0.0.0.0", False)]
)
def test_http_serves_with_a_token_or_on_loopback_when_asked(host: str, no_auth: bool) -> None:
    http.check_auth(host, None if no_auth else "secret", no_auth)


def test_profiles_are_nested() -> None:
    assert (
        set(PROFILES["vm-run"]) < set(PROFILES["workspace-core"]) < set(PROFILES["workspace-full"])
    )


def test_service_start_takes_3_11s_ready_options_and_refuses_two() -> None:
    start = tools_of("workspace-full")["service_start"].input_schema["properties"]
    assert {"ready_file", "ready_tcp", "ready_http", "ready_command"} <= set(start)
    assert "readiness" not in start and "secret_env" in start
    server = create_server(Pyro(), profile="workspace-full")
    arguments = {"workspace_id": "0123456789ab", "service_name": "web", "command": "true",
                 "ready_file": "r", "ready_tcp": "127.0.0.1:80"}  # fmt: skip
    with pytest.raises(Exception, match="at most one readiness check"):
        anyio.run(lambda: server.call_tool("service_start", arguments))
