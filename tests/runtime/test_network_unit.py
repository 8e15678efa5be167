"""Guest networking as the runtime sees it, without booting anything: policies and allowlists
checked, uplink slots held in the state store, and what views and `network_info_vm` report."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from framework.state_rows import vm_record
from pyro_mcp.errors import ConflictError, InvalidArgumentError
from pyro_mcp.network.addressing import POOL_ENV, Uplink
from pyro_mcp.network.vm import NetworkPlan
from pyro_mcp.runtime import network as net
from pyro_mcp.sdk import Pyro
from pyro_mcp.state import network as slots
from pyro_mcp.state.store import StateStore


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


def row(**fields: Any) -> dict[str, Any]:
    return vm_record("vm1", **{"network_enabled": 0, "net_slot": None, "allow_hosts": None,
                               **fields})  # fmt: skip


# --- policies and allowlists ----------------------------------------------------------------


@pytest.mark.parametrize("policy", ["off", "egress", "egress+published-ports"])
def test_the_three_policies_are_accepted(policy: str) -> None:
    assert net.check_policy(policy) == policy


@pytest.mark.parametrize("policy", ["on", "EGRESS", "egress ", "", None, True, 1, ["egress"]])
def test_any_other_policy_is_refused_with_the_list(policy: object) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        net.check_policy(policy)
    assert caught.value.message == (
        f"network_policy must be one of off, egress, egress+published-ports, got {policy!r}"
    )


def test_no_allowlist_is_an_empty_one_with_or_without_a_network() -> None:
    assert net.check_allow_hosts(None, False) == []
    assert net.check_allow_hosts(None, True) == []
    assert net.check_allow_hosts([], False) == []  # nothing asked: nothing to refuse


def test_an_allowlist_is_stored_normalised() -> None:
    given = [
        "API.Example.com.",
        "*.Example.org",
        "198.51.100.7",
        "203.0.113.9/24",
        "api.example.com",
    ]
    assert net.check_allow_hosts(given, True) == [
        "api.example.com", "*.example.org", "198.51.100.7/32", "203.0.113.0/24",
    ]  # fmt: skip


def test_an_allowlist_for_a_vm_without_a_network_is_refused_naming_the_policy() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        net.check_allow_hosts(["example.com"], False)
    assert caught.value.message == "allow_hosts needs a network"
    assert caught.value.hint is not None and "network_policy='egress'" in caught.value.hint


def test_a_bad_allowlist_is_refused_before_the_network_setting_matters() -> None:
    for enabled in (True, False):
        with pytest.raises(InvalidArgumentError, match="'bad_name' is not a valid domain name"):
            net.check_allow_hosts(["bad_name"], enabled)


# --- slots ----------------------------------------------------------------------------------


def test_reserve_gives_distinct_slots_and_a_full_pool_is_a_conflict_naming_the_pool(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(POOL_ENV, "10.99.0.0/28")  # four slots
    for i in range(4):
        store.insert_vm(vm_record(f"vm{i}", network_enabled=1))
        assert net.reserve(store, f"vm{i}") == i
    store.insert_vm(vm_record("late", network_enabled=1))
    with pytest.raises(ConflictError) as caught:
        net.reserve(store, "late")
    assert "all 4 network slots are in use" in caught.value.message
    assert caught.value.hint is not None and POOL_ENV in caught.value.hint
    assert caught.value.__cause__ is None  # the store's own exception stays inside


# --- plans and views ------------------------------------------------------------------------


def test_a_vm_without_a_network_has_no_plan_and_says_why() -> None:
    vm = row(state="started")
    assert net.plan_of(vm) is None
    assert net.info(vm) == {
        "vm_id": "vm1",
        "network_enabled": False,
        "outbound_connectivity_expected": False,
        "reason": "this VM has no network device (created without network=True)",
    }
    assert net.view_fields(False) == {"network_enabled": False, "guest_ip": None, "tap_name": None}


def test_a_started_networked_vm_reports_its_configuration() -> None:
    vm = row(state="started", network_enabled=1, net_slot=7,
             allow_hosts=json.dumps(["example.com", "203.0.113.0/24"]))  # fmt: skip
    assert net.plan_of(vm) == NetworkPlan(7, ("example.com", "203.0.113.0/24"))
    uplink = Uplink.of(7)
    assert net.info(vm) == {
        "vm_id": "vm1",
        "network_enabled": True,
        "guest_ip": "172.16.0.2",
        "gateway_ip": "172.16.0.1",
        "subnet_cidr": "172.16.0.0/30",
        "mac_address": "02:50:59:00:00:02",
        "tap_name": "tap0",
        "dns_servers": ["172.16.0.1"],
        "host_uplink": {"link": "pyv7", "subnet_cidr": str(uplink.subnet)},
        "allow_hosts": ["example.com", "203.0.113.0/24"],
        "outbound_connectivity_expected": True,
    }
    assert net.view_fields(True) == {
        "network_enabled": True, "guest_ip": "172.16.0.2", "tap_name": "tap0",
    }  # fmt: skip


def test_a_created_networked_vm_holds_its_slot_but_expects_no_traffic_yet() -> None:
    vm = row(state="created", network_enabled=1, net_slot=3)
    info = net.info(vm)
    assert info["host_uplink"]["link"] == "pyv3" and info["allow_hosts"] == []
    assert info["outbound_connectivity_expected"] is False


def test_a_stopped_networked_vm_holds_no_network_and_says_so() -> None:
    vm = row(state="stopped", network_enabled=1, net_slot=None)
    assert net.plan_of(vm) is None
    assert net.info(vm) == {
        "vm_id": "vm1",
        "network_enabled": True,
        "outbound_connectivity_expected": False,
        "reason": "the VM is stopped: it holds no network while it is not running",
    }


def test_a_slot_without_network_enabled_gives_no_plan() -> None:
    assert net.plan_of(row(state="started", network_enabled=0, net_slot=2)) is None


def test_stored_allowlists_read_back_from_json_or_nothing() -> None:
    assert net.stored_allow_hosts(row()) == []
    assert net.stored_allow_hosts(row(allow_hosts="[]")) == []
    assert net.stored_allow_hosts(row(allow_hosts='["a.example"]')) == ["a.example"]


# --- through the SDK ------------------------------------------------------------------------


def host_subnet(pyro: Pyro, vm_id: str) -> ipaddress.IPv4Network:
    info = pyro.network_info_vm(vm_id)
    return ipaddress.IPv4Network(info["host_uplink"]["subnet_cidr"])


def test_fifty_networked_vms_get_fifty_distinct_host_subnets() -> None:
    pyro = Pyro()  # cache and state in this test's own directories
    ids = [pyro.create_vm(environment="debian:12", network=True)["vm_id"] for _ in range(50)]
    subnets = [host_subnet(pyro, vm_id) for vm_id in ids]
    assert len(set(subnets)) == 50
    held = slots.held(pyro.vms.store)
    assert [Uplink.of(held[vm_id]).subnet for vm_id in ids] == subnets
    for vm_id in ids:
        pyro.delete_vm(vm_id)
    assert slots.held(pyro.vms.store) == {}


def test_a_full_pool_refuses_the_vm_and_leaves_no_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POOL_ENV, "10.99.0.0/28")
    pyro = Pyro()
    for _ in range(4):
        pyro.create_vm(environment="debian:12", network=True)
    with pytest.raises(ConflictError, match="network slots are in use"):
        pyro.create_vm(environment="debian:12", network=True)
    assert len(pyro.vms.store.list_vms()) == 4
    pyro.create_vm(environment="debian:12")  # without a network no slot is needed
    assert len(slots.held(pyro.vms.store)) == 4


def test_stopping_a_networked_vm_that_never_started_frees_its_slot() -> None:
    pyro = Pyro()
    vm_id = pyro.create_vm(environment="debian:12", network=True)["vm_id"]
    assert slots.held(pyro.vms.store) == {vm_id: 0}
    pyro.stop_vm(vm_id)
    assert slots.held(pyro.vms.store) == {}
    info = pyro.network_info_vm(vm_id)
    assert info["network_enabled"] is True and "stopped" in info["reason"]
