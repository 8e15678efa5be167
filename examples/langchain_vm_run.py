"""A LangChain tool, `vm_run`, and a minimal tool-calling loop around any chat model.

    pip install langchain langchain-openai      # or another provider's package
    export OPENAI_API_KEY=...
    python examples/langchain_vm_run.py "Which git version does debian:12 ship?"

`run_agent` works with any `BaseChatModel` that supports `.bind_tools(...)`; nothing here
depends on a particular provider.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool

from pyro_mcp import Pyro
from pyro_mcp.errors import PyroError

# Each turn can boot a VM; a model that keeps calling tools is stopped here.
MAX_TURNS = 8


def make_vm_run_tool(pyro: Any = None) -> BaseTool:
    """The `vm_run` tool, bound to one Pyro (a fake one in tests)."""
    runner = pyro if pyro is not None else Pyro()

    @tool
    def vm_run(command: str, environment: str = "debian:12", timeout_seconds: int = 30) -> str:
        """Run one shell command in a fresh, disposable Linux microVM (no network).

        Returns JSON with stdout, stderr and exit_code. The VM is deleted afterwards, so
        nothing persists between calls.

        Args:
            command: Shell command, run with `sh -lc` in the guest.
            environment: Guest environment, e.g. debian:12.
            timeout_seconds: Kill the command after this many seconds.
        """
        try:
            result = runner.run_in_vm(
                environment=environment, command=command, timeout_seconds=timeout_seconds
            )
        except PyroError as exc:
            # Returned, not raised: the model reads the error and can try something else.
            result = {"error": exc.to_dict()}
        return json.dumps(result)

    return vm_run


def run_agent(model: BaseChatModel, prompt: str, pyro: Any = None) -> str:
    """Let the model call vm_run until it answers without tool calls; returns that answer."""
    vm_run = make_vm_run_tool(pyro)
    bound = model.bind_tools([vm_run])
    messages: list[BaseMessage] = [HumanMessage(prompt)]
    for _ in range(MAX_TURNS):
        reply = bound.invoke(messages)
        messages.append(reply)
        if not isinstance(reply, AIMessage) or not reply.tool_calls:
            return reply.text
        for call in reply.tool_calls:
            if call["name"] == vm_run.name:
                # Invoked with the whole tool call, a tool returns a ToolMessage with its id.
                messages.append(vm_run.invoke(call))
            else:
                error = f"unknown tool {call['name']!r}"
                messages.append(ToolMessage(error, tool_call_id=call["id"], status="error"))
    raise RuntimeError(f"no answer after {MAX_TURNS} turns")


def main() -> None:
    # Any chat model works. init_chat_model (from the `langchain` package) picks one from a
    # "provider:model" string, e.g. "openai:gpt-4.1-mini" (needs langchain-openai) or
    # "anthropic:claude-sonnet-4-5" (needs langchain-anthropic). Or build your model directly
    # and pass it to run_agent.
    from langchain.chat_models import init_chat_model

    model = init_chat_model(os.environ.get("CHAT_MODEL", "openai:gpt-4.1-mini"))
    prompt = " ".join(sys.argv[1:]) or "Which version of git does debian:12 ship? Check in a VM."
    print(run_agent(model, prompt))


if __name__ == "__main__":
    main()
