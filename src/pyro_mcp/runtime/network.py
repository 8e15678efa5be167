"""Guest networking as the runtime sees it: policies and allowlists checked, uplink slots held
in the state store, the plan handed to a VM's supervisor, and what views report."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pyro_mcp.errors import ConflictError, InvalidArgumentError
from pyro_mcp.network import addressing
from pyro_mcp.network.allowlist import AllowList
from pyro_mcp.network.vm import NetworkPlan, describe
from pyro_mcp.state import network as slots
from pyro_mcp.state.store import StateStore

POLICIES = ("off", "egress", "egress+published-ports")


def check_policy(policy: object) -> str:
    if policy not in POLICIES:
        raise InvalidArgumentError(
            f"network_policy must be one of {', '.join(POLICIES)}, got {policy!r}",
            hint="`off` gives the VM no network device; `egress` reaches public addresses",
        )
    return str(policy)


def check_allow_hosts(allow_hosts: Iterable[str] | None, enabled: bool) -> list[str]:
    """The allowlist as stored (normalised entries); refused for a VM without a network."""
    if allow_hosts is None:
        return []
    entries = AllowList.parse(allow_hosts).entries()
    if entries and not enabled:
        raise InvalidArgumentError(
            "allow_hosts needs a network",
            hint="create the workspace with network_policy='egress' (CLI: --network-policy egress)",
        )
    return entries


def reserve(store: StateStore, vm_id: str) -> int:
    """Give the VM a host-side uplink slot that no other VM holds."""
    try:
        return slots.allocate(store, vm_id, addressing.slot_count())
    except slots.SlotsExhaustedError as exc:
        raise ConflictError(
            f"{exc}: every networked VM holds one until it stops",
            hint=f"stop networked VMs, or set {addressing.POOL_ENV} to a larger range",
        ) from None


def stored_allow_hosts(row: dict[str, Any]) -> list[str]:
    return [str(h) for h in json.loads(row.get("allow_hosts") or "[]")]


def plan_of(row: dict[str, Any]) -> NetworkPlan | None:
    if not row.get("network_enabled") or row.get("net_slot") is None:
        return None
    return NetworkPlan(int(row["net_slot"]), tuple(stored_allow_hosts(row)))


def view_fields(enabled: bool) -> dict[str, Any]:
    """`network_enabled`, `guest_ip` and `tap_name` as the VM and workspace views show them."""
    return {
        "network_enabled": enabled,
        "guest_ip": addressing.GUEST_IP if enabled else None,
        "tap_name": addressing.TAP_NAME if enabled else None,
    }


def info(row: dict[str, Any]) -> dict[str, Any]:
    """`network_info_vm`: the real configuration, or why there is none."""
    plan = plan_of(row)
    if plan is None:
        reason = (
            "this VM has no network device (created without network=True)"
            if not row.get("network_enabled")
            else f"the VM is {row['state']}: it holds no network while it is not running"
        )
        return {
            "vm_id": row["vm_id"],
            "network_enabled": bool(row.get("network_enabled")),
            "outbound_connectivity_expected": False,
            "reason": reason,
        }
    described = describe(plan)
    return {
        "vm_id": row["vm_id"],
        **described,
        "outbound_connectivity_expected": row["state"] == "started",
    }
