"""One-shot runs: one command in a VM, then the VM is deleted, whatever happens.

A request refused before anything runs (bad arguments, a VM that is not started) leaves the
VM as it is; once the command is on its way, the VM goes however the command ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyro_mcp.host.process import ProcessRef
from pyro_mcp.runtime import vm_records
from pyro_mcp.runtime.arguments import Command, OutputCallback, check_range, command_parts
from pyro_mcp.runtime.vm_views import exec_view

if TYPE_CHECKING:
    from pyro_mcp.runtime.vms import VmService


def exec_then_delete(
    vms: VmService,
    vm_id: str,
    command: Command,
    timeout_seconds: int,
    on_output: OutputCallback | None,
) -> dict[str, Any]:
    """Run `command` in the started VM `vm_id`, then delete the VM."""
    check_range("timeout_seconds", timeout_seconds)
    command_parts(command)
    vm_records.load_started(vms.store, vm_id)
    try:
        row, result, wall = vms.exec_in(
            vm_id, command, timeout_seconds=timeout_seconds, on_output=on_output
        )
    except BaseException:
        with contextlib.suppress(Exception):
            vms.delete_vm(vm_id, reason="run_vm_error_cleanup")
        raise
    cleanup = vms.delete_vm(vm_id, reason="post_exec_cleanup")
    return exec_view(row, command, result, wall, cleanup)


def run_in_fresh_vm(
    vms: VmService,
    *,
    environment: str,
    command: Command,
    resources: dict[str, Any],
    timeout_seconds: int,
    on_output: OutputCallback | None,
    on_phase: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Create a VM with `resources` (create_vm's arguments), start it, run `command`, and
    delete the VM; it dies with this process if this process dies first."""
    check_range("timeout_seconds", timeout_seconds)
    command_parts(command)
    if on_phase:
        on_phase(f"create environment={environment}")
    vm_id = vms.create_vm(environment=environment, _owner=ProcessRef.me(), **resources)["vm_id"]
    try:
        vms.start_vm(vm_id, on_phase=on_phase)
        if on_phase:
            on_phase("execute")
        return exec_then_delete(vms, vm_id, command, timeout_seconds, on_output)
    except BaseException:
        with contextlib.suppress(Exception):  # NotFoundError: exec_then_delete already did
            vms.delete_vm(vm_id, reason="run_vm_error_cleanup")
        raise
