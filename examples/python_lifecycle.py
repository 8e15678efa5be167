"""Drive one VM through its lifecycle step by step: create, start, status, exec.

    python examples/python_lifecycle.py

`exec_vm` runs exactly one command and then deletes the VM: it is the one-command VM of
`run_in_vm`, split into steps so you can look at the VM before the command runs. For several
commands in the same machine, use a workspace (see python_workspace.py).
"""

from __future__ import annotations

import contextlib

from pyro_mcp import Pyro
from pyro_mcp.errors import NotFoundError


def main() -> None:
    pyro = Pyro()
    # A short TTL is a safety net: even if this process were killed, the VM expires on its own.
    vm = pyro.create_vm(environment="debian:12", ttl_seconds=300)
    vm_id = vm["vm_id"]
    print(f"created  {vm_id}: state={vm['state']}")
    try:
        started = pyro.start_vm(vm_id)
        print(f"started  {vm_id}: state={started['state']} mode={started['execution_mode']}")

        status = pyro.status_vm(vm_id)
        print(f"status   {vm_id}: state={status['state']} ttl={status['ttl_seconds']}s")

        # The last thing this VM does: once the command has run, exec_vm deletes the VM.
        result = pyro.exec_vm(vm_id, command="uname -sr && git --version", timeout_seconds=30)
        print(f"exec     exit_code={result['exit_code']} cleanup={result['cleanup']['reason']}")
        print(result["stdout"], end="")

        try:
            pyro.status_vm(vm_id)
        except NotFoundError:
            print(f"deleted  {vm_id}: it is gone after its one command")
    finally:
        # Any error before or during exec_vm must not leave a VM running. When exec_vm has
        # already deleted it, there is nothing left to delete: NotFoundError is expected.
        with contextlib.suppress(NotFoundError):
            pyro.delete_vm(vm_id)


if __name__ == "__main__":
    main()
