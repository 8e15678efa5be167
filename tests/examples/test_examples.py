"""The examples work: the SDK ones against real VMs, the agent loops against scripted models."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from pydantic import Field

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROFILES = ("vm-run", "workspace-core", "workspace-full")
CANNED = {"vm_id": "vm-fake", "stdout": "git version 2.39.5\n", "stderr": "", "exit_code": 0}


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py; examples/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location(f"pyro_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic (behind @tool) resolves annotations through it
    spec.loader.exec_module(module)
    return module


class FakePyro:
    """Stands in for Pyro: these tests are about the tool loop, not about VMs."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def run_in_vm(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return dict(CANNED)


# --- the SDK examples, against real VMs ----------------------------------------------------


def run_example(name: str, cache_dir: Path) -> str:
    env = {**os.environ, "PYRO_CACHE_DIR": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,  # QEMU TCG on a shared CPU is slow; a workspace boots twice
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    # The examples clean up after themselves; leak_guard proves nothing is left running.
    state = Path(os.environ["PYRO_STATE_DIR"])
    left = [str(p) for top in ("vms", "workspaces") for p in (state / top).rglob("*")]
    assert left == []
    return done.stdout


@pytest.mark.integration
@pytest.mark.vm
def test_python_run(built_debian12: Any, leak_guard: Any) -> None:
    out = run_example("python_run.py", built_debian12.cache_dir)
    assert "git version" in out
    assert "exit_code:      0" in out


@pytest.mark.integration
@pytest.mark.vm
def test_python_lifecycle(built_debian12: Any, leak_guard: Any) -> None:
    out = run_example("python_lifecycle.py", built_debian12.cache_dir)
    assert "state=started" in out
    assert "git version" in out
    assert "it is gone after its one command" in out


@pytest.mark.integration
@pytest.mark.vm
def test_python_workspace(built_debian12: Any, leak_guard: Any) -> None:
    out = run_example("python_workspace.py", built_debian12.cache_dir)
    assert "exec #1: hello from linux" in out
    assert "exec #2: patched hello from linux" in out
    assert "+remember me" in out  # the diff shows the new file
    assert '+print("patched hello from", sys.platform)' in out  # and the patch
    assert "exported to" in out
    after = next(line for line in out.splitlines() if line.startswith("after reset:"))
    assert "hello from linux" in after and "patched" not in after and "notes.txt" not in after
    assert "deleted" in out


# --- OpenAI Responses API: the real client, a scripted server -------------------------------


def response_body(response_id: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": 0,
        "model": "test-model",
        "status": "completed",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def test_openai_example_runs_the_tool_loop() -> None:
    example = load_example("openai_responses_vm_run")
    arguments = {"environment": "debian:12", "command": "git --version", "timeout_seconds": 20}
    requests: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/responses"
        body = json.loads(request.content)
        requests.append(body)
        assert [tool["name"] for tool in body["tools"]] == ["vm_run"]
        if len(requests) == 1:
            call = {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": "vm_run",
                "arguments": json.dumps(arguments),
                "status": "completed",
            }
            return httpx.Response(200, json=response_body("resp_1", [call]))
        # The second turn must hand the model its call back, followed by the call's result.
        items = body["input"]
        assert items[0] == {"role": "user", "content": "which git?"}
        assert items[1]["type"] == "function_call" and items[1]["call_id"] == "call_1"
        output = items[2]
        assert output["type"] == "function_call_output" and output["call_id"] == "call_1"
        assert json.loads(output["output"]) == CANNED
        message = {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "git 2.39.5", "annotations": []}],
        }
        return httpx.Response(200, json=response_body("resp_2", [message]))

    client = openai.OpenAI(
        api_key="test",
        base_url="http://test",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    pyro = FakePyro()
    answer = example.run_agent(client, "which git?", pyro=pyro, model="test-model")

    assert answer == "git 2.39.5"
    assert len(requests) == 2
    assert pyro.calls == [arguments]


def test_openai_example_reports_bad_arguments_to_the_model() -> None:
    example = load_example("openai_responses_vm_run")
    result = example.call_vm_run(FakePyro(), '{"command": "true"}')
    assert result["error"]["type"] == "bad_arguments"


# --- LangChain: real langchain-core, a scripted chat model ----------------------------------


class ScriptedChatModel(FakeMessagesListChatModel):
    """Replies from a list and records what it was shown; binding tools changes nothing."""

    bound_tools: list[str] = Field(default_factory=list)
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:
        self.bound_tools = [tool.name for tool in tools]
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)


def test_langchain_example_runs_the_tool_loop() -> None:
    example = load_example("langchain_vm_run")
    call = {
        "name": "vm_run",
        "args": {"command": "git --version", "environment": "debian:12"},
        "id": "call_1",
        "type": "tool_call",
    }
    model = ScriptedChatModel(
        responses=[AIMessage(content="", tool_calls=[call]), AIMessage(content="git 2.39.5")]
    )
    pyro = FakePyro()
    answer = example.run_agent(model, "which git?", pyro=pyro)

    assert answer == "git 2.39.5"
    assert model.bound_tools == ["vm_run"]
    # The tool's defaults fill in what the model left out.
    assert pyro.calls == [
        {"environment": "debian:12", "command": "git --version", "timeout_seconds": 30}
    ]
    tool_message = model.seen[1][-1]
    assert isinstance(tool_message, ToolMessage)
    assert tool_message.tool_call_id == "call_1"
    assert json.loads(tool_message.content) == CANNED


# --- MCP host configs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["claude_desktop_mcp_config.json", "cursor_mcp_config.json"])
def test_mcp_host_configs(name: str) -> None:
    config = json.loads((EXAMPLES / name).read_text())
    server = config["mcpServers"]["pyro"]
    assert server["command"] == "pyro"
    assert server["args"] == ["mcp", "serve", "--profile", "workspace-core"]


def test_mcp_client_config_doc() -> None:
    doc = (EXAMPLES / "mcp_client_config.md").read_text()
    for profile in PROFILES:
        assert f"`{profile}`" in doc
    for needle in ("--allow-path", "PYRO_MCP_TOKEN", "Authorization: Bearer", "--no-auth"):
        assert needle in doc
