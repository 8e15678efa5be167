"""A real MCP client (the mcp SDK's ClientSession) against `pyro mcp serve` in a subprocess,
over stdio and over streamable HTTP.

The VM tests end with the leak check of `leak_guard` (tests/vm_leaks.py): the server's VMs
and workspaces are all gone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.client.streamable_http import streamable_http_client

from framework.waiting import wait_until
from mcp import ClientSession, StdioServerParameters, stdio_client
from pyro_mcp import paths
from pyro_mcp.mcp.profiles import WORKSPACE_FULL

ENV = "debian:12"


def server_env(cache_dir: Path | None) -> dict[str, str]:
    env = {"PYRO_STATE_DIR": str(paths.state_dir()), "PYRO_STANDBY": "0"}
    env["PYRO_CACHE_DIR"] = str(cache_dir) if cache_dir else str(paths.cache_dir())
    env["PATH"] = os.environ["PATH"]
    return env


@asynccontextmanager
async def stdio_session(
    cwd: Path, *args: str, cache_dir: Path | None = None
) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pyro_mcp.cli.main", "mcp", "serve", *args],
        env=server_env(cache_dir),
        cwd=cwd,
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
    assert result.structured_content is not None
    return dict(result.structured_content)


async def refused(session: ClientSession, tool: str, **arguments: Any) -> str:
    result = await session.call_tool(tool, arguments)
    assert result.is_error, result
    return str(result.content[0].text)  # type: ignore[union-attr]


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_each_profile_lists_its_tools(tmp_path: Path, transport: str) -> None:
    async def main() -> dict[str, list[str]]:
        found = {}
        for profile in ("vm-run", "workspace-core", "workspace-full"):
            async with session_over(transport, tmp_path, "--profile", profile) as session:
                tools = (await session.list_tools()).tools
                found[profile] = [tool.name for tool in tools]
                schema = {t.name: t.input_schema for t in tools}["vm_run"]
                assert schema["properties"]["timeout_seconds"]["default"] == 30
        return found

    found = anyio.run(main)
    assert found["vm-run"] == ["vm_run"]
    assert len(found["workspace-core"]) == 16 and len(found["workspace-full"]) == len(
        WORKSPACE_FULL
    )
    assert "workspace_patch_apply" in found["workspace-core"]


@pytest.mark.integration
@pytest.mark.vm
@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_vm_run_and_a_whole_workspace_flow(
    built_debian12: Any, tmp_path: Path, leak_guard: Any, transport: str
) -> None:
    root = tmp_path / "root"
    (root / "seed").mkdir(parents=True)
    (root / "seed" / "app.py").write_text("print('one')\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret\n")

    async def main() -> None:
        async with session_over(transport, root, "--profile", "workspace-core",
                                cache_dir=built_debian12.cache_dir) as s:  # fmt: skip
            ran = await call(s, "vm_run", environment=ENV, command=["git", "--version"])
            assert ran["exit_code"] == 0 and ran["stdout"].startswith("git version")
            # host paths outside the allowed roots: refused, nothing read or written
            text = await refused(s, "workspace_create", environment=ENV, seed_path=str(outside))
            assert "outside the host paths" in text and "--allow-path" in text
            ws = await call(s, "workspace_create", environment=ENV, seed_path="seed")
            wid = ws["workspace_id"]
            await call(s, "workspace_exec", workspace_id=wid, command="python3 app.py > out.txt")
            await call(s, "workspace_file_write", workspace_id=wid, path="notes.md", text="hi\n")
            patch = "--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-print('one')\n+print('two')\n"
            await call(s, "workspace_patch_apply", workspace_id=wid, patch=patch)
            diff = await call(s, "workspace_diff", workspace_id=wid)
            assert diff["summary"]["added"] == 2 and diff["summary"]["modified"] == 1
            await refused(s, "workspace_sync_push", workspace_id=wid, source_path=str(outside))
            await refused(s, "workspace_export", workspace_id=wid, path="app.py",
                          output_path=str(outside / "leak.py"))  # fmt: skip
            done = await call(s, "workspace_export", workspace_id=wid, path="app.py",
                              output_path="exported/app.py")  # fmt: skip
            assert done["output_path"] == str(root / "exported" / "app.py")
            read = await call(s, "workspace_file_read", workspace_id=wid, path="out.txt")
            assert read["content"] == "one\n"
            reset = await call(s, "workspace_reset", workspace_id=wid)
            assert reset["reset_count"] == 1 and reset["command_count"] == 1
            logs = await call(s, "workspace_logs", workspace_id=wid)
            assert "stdout_file" not in logs["entries"][0]
            await call(s, "workspace_delete", workspace_id=wid)

    anyio.run(main)
    assert (root / "exported" / "app.py").read_text() == "print('two')\n"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


@pytest.mark.integration
@pytest.mark.vm
def test_a_slow_vm_run_does_not_stall_workspace_list(
    built_debian12: Any, tmp_path: Path, leak_guard: Any
) -> None:
    order: list[str] = []

    async def main() -> None:
        async with stdio_session(tmp_path, cache_dir=built_debian12.cache_dir) as session:

            async def slow() -> None:
                await call(session, "vm_run", environment=ENV, command="sleep 8; echo done")
                order.append("vm_run")

            async def quick() -> None:
                await anyio.sleep(2)  # the VM is booting or sleeping by now
                await call(session, "workspace_list")
                order.append("workspace_list")

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(slow)
                tasks.start_soon(quick)

    anyio.run(main)
    assert order == ["workspace_list", "vm_run"]


# --- streamable HTTP -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def http_server(
    cwd: Path, cache_dir: Path | None, token: str | None, *extra: str
) -> AsyncIterator[str]:
    port = free_port()
    env = {**os.environ, **server_env(cache_dir)}
    env.pop("PYRO_MCP_TOKEN", None)
    if token:
        env["PYRO_MCP_TOKEN"] = token
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyro_mcp.cli.main", "mcp", "serve", "--transport",
         "streamable-http", "--port", str(port), *extra],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(30)


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, "the HTTP server to listen", limit=30)


async def over_http(url: str, token: str | None, body: Callable[[ClientSession], Any]) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=300) as client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await body(session)


async def tool_names(session: ClientSession) -> list[str]:
    return [tool.name for tool in (await session.list_tools()).tools]


TOKEN = "test-token"


@asynccontextmanager
async def session_over(
    transport: str, cwd: Path, *args: str, cache_dir: Path | None = None
) -> AsyncIterator[ClientSession]:
    """A client session with `pyro mcp serve ARGS`, over stdio or HTTP with a token."""
    if transport == "stdio":
        async with stdio_session(cwd, *args, cache_dir=cache_dir) as session:
            yield session
        return
    async with (
        http_server(cwd, cache_dir, TOKEN, *args) as url,
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300) as client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def test_http_without_the_token_gets_401_and_with_it_works(tmp_path: Path) -> None:
    async def main() -> None:
        async with http_server(tmp_path, None, "s3cret", "--profile", "vm-run") as url:
            async with httpx2.AsyncClient() as raw:
                for headers in ({}, {"Authorization": "Bearer wrong"}):
                    response = await raw.post(url, json={}, headers=headers)
                    assert response.status_code == 401
                    assert response.headers["www-authenticate"].startswith("Bearer")
            assert await over_http(url, "s3cret", tool_names) == ["vm_run"]

    anyio.run(main)


def test_http_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {**os.environ}
    env.pop("PYRO_MCP_TOKEN", None)
    for extra in ([], ["--host", "0.0.0.0", "--no-auth"]):
        proc = subprocess.run(
            [sys.executable, "-m", "pyro_mcp.cli.main", "mcp", "serve", "--transport",
             "streamable-http", "--port", str(free_port()), *extra],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 1 and proc.stderr.startswith("[error] "), proc.stderr
        assert "PYRO_MCP_TOKEN" in proc.stderr


def test_http_on_loopback_with_no_auth_serves(tmp_path: Path) -> None:
    async def main() -> None:
        async with http_server(tmp_path, None, None, "--no-auth") as url:
            assert len(await over_http(url, None, tool_names)) == len(WORKSPACE_FULL)

    anyio.run(main)
