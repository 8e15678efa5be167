"""Run one command in a fresh microVM with the Python SDK.

    python examples/python_run.py

The VM boots, runs the command and is deleted again, whatever happens; the result is a dict.
Build the environment once beforehand (`pyro env pull debian:12`) so the run does not wait for it.
"""

from __future__ import annotations

from pyro_mcp import Pyro


def main() -> None:
    pyro = Pyro()
    # An argv list runs exactly as given; a plain string would run through `sh -lc`.
    result = pyro.run_in_vm(
        environment="debian:12", command=["git", "--version"], timeout_seconds=30
    )

    print(f"vm_id:          {result['vm_id']} (already deleted: {result['cleanup']['deleted']})")
    print(f"environment:    {result['environment']}")
    print(f"execution_mode: {result['execution_mode']}")
    print(f"exit_code:      {result['exit_code']} (timed out: {result['timed_out']})")
    print(f"duration_ms:    {result['duration_ms']}")
    print(f"stdout:         {result['stdout'].strip()}")
    if result["stderr"]:
        print(f"stderr:         {result['stderr'].strip()}")


if __name__ == "__main__":
    main()
