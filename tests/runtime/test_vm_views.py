"""A VM's record and a command's result in the contract's shapes."""

from __future__ import annotations

from typing import Any

from pyro_mcp.agent_client.client import ExecResult
from pyro_mcp.runtime.vm_views import exec_view, vm_metadata, vm_view

ROW: dict[str, Any] = {
    "vm_id": "abcdef123456",
    "environment": "debian:12",
    "environment_version": "1.0.0",
    "vcpu_count": 1,
    "mem_mib": 1024,
    "ttl_seconds": 600,
    "created_at": 10.0,
    "expires_at": 610.0,
    "state": "started",
    "network_enabled": 0,
    "execution_mode": "qemu-tcg",
    "stop_reason": None,
    "backend": None,
    "boot_mode": None,
    "boot_note": None,
}


def test_a_vm_not_yet_booted_reports_pending_metadata_and_no_network() -> None:
    assert vm_metadata(ROW) == {"backend": "pending", "boot_mode": "pending", "boot_note": ""}
    view = vm_view(ROW)
    assert view["network_enabled"] is False and view["allow_host_compat"] is False
    assert (view["guest_ip"], view["tap_name"]) == (None, None)
    booted = {**ROW, "backend": "qemu", "boot_mode": "cold", "boot_note": "no snapshot"}
    assert vm_view(booted)["metadata"] == {
        "backend": "qemu",
        "boot_mode": "cold",
        "boot_note": "no snapshot",
    }


def test_an_exec_result_shows_the_command_as_given_and_both_durations() -> None:
    result = ExecResult(3, "out", "err", False, True, 40, False)
    view = exec_view(ROW, ["echo", "a b"], result, 55, {"deleted": True})
    assert view["command"] == "echo 'a b'"
    assert (view["exit_code"], view["stdout"], view["stderr"]) == (3, "out", "err")
    assert (view["stdout_truncated"], view["stderr_truncated"]) == (False, True)
    assert (view["duration_ms"], view["guest_duration_ms"], view["timed_out"]) == (55, 40, False)
    assert view["cleanup"] == {"deleted": True} and view["execution_mode"] == "qemu-tcg"
