"""Give an OpenAI model one tool, `vm_run`, that runs commands in disposable microVMs.

    export OPENAI_API_KEY=...
    python examples/openai_responses_vm_run.py "Which git version does debian:12 ship?"

Uses the Responses API: the model asks for `function_call`s, this script runs each one in a
fresh VM with `Pyro().run_in_vm(...)`, sends the results back as `function_call_output`
items, and repeats until the model answers in text.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from pyro_mcp import Pyro
from pyro_mcp.errors import PyroError

if TYPE_CHECKING:
    from openai import OpenAI

DEFAULT_MODEL = os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")
# Each turn can boot a VM; a model that keeps calling tools is stopped here.
MAX_TURNS = 8

# Strict mode wants every property required and no others, so the model always sends all three.
VM_RUN_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "vm_run",
    "description": (
        "Run one shell command in a fresh, disposable Linux microVM (no network) and return "
        "its stdout, stderr and exit code. The VM is deleted afterwards, so nothing persists "
        "between calls."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "environment": {
                "type": "string",
                "description": "Guest environment; use debian:12 unless told otherwise.",
            },
            "command": {
                "type": "string",
                "description": "Shell command, run with `sh -lc` in the guest.",
            },
            "timeout_seconds": {
                "type": "integer",
                "description": "Kill the command after this many seconds (30 is a good default).",
            },
        },
        "required": ["environment", "command", "timeout_seconds"],
        "additionalProperties": False,
    },
    "strict": True,
}


def call_vm_run(pyro: Any, arguments: str) -> dict[str, Any]:
    """Run the tool call; errors come back as data so the model can read them and retry."""
    try:
        args = json.loads(arguments)
        return pyro.run_in_vm(
            environment=args["environment"],
            command=args["command"],
            timeout_seconds=int(args.get("timeout_seconds") or 30),
        )
    except PyroError as exc:
        return {"error": exc.to_dict()}
    except (ValueError, KeyError, TypeError) as exc:
        return {"error": {"type": "bad_arguments", "message": str(exc)}}


def run_agent(client: OpenAI, prompt: str, pyro: Any = None, model: str = DEFAULT_MODEL) -> str:
    """Let the model use vm_run until it answers with text; returns that text."""
    pyro = pyro if pyro is not None else Pyro()
    # The whole conversation is sent each turn, so no server-side state is needed.
    conversation: list[Any] = [{"role": "user", "content": prompt}]
    for _ in range(MAX_TURNS):
        response = client.responses.create(model=model, input=conversation, tools=[VM_RUN_TOOL])
        # Every output item goes back as is: function calls (and any reasoning items) must be
        # in the input next to their outputs.
        conversation += response.output
        calls = [item for item in response.output if item.type == "function_call"]
        if not calls:
            return response.output_text
        for call in calls:
            if call.name == "vm_run":
                result = call_vm_run(pyro, call.arguments)
            else:
                result = {"error": {"type": "unknown_tool", "message": call.name}}
            conversation.append(
                {
                    "type": "function_call_output",
                    "call_id": call.call_id,
                    "output": json.dumps(result),
                }
            )
    raise RuntimeError(f"no answer after {MAX_TURNS} turns")


def main() -> None:
    from openai import OpenAI  # only the real client needs openai; run_agent takes any

    prompt = " ".join(sys.argv[1:]) or "Which version of git does debian:12 ship? Check in a VM."
    # OpenAI() reads OPENAI_API_KEY (and OPENAI_BASE_URL, if set) from the environment.
    print(run_agent(OpenAI(), prompt))


if __name__ == "__main__":
    main()
