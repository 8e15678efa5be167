"""The VM service's checks and records without booting anything.

Nothing here starts a VMM: every VM stays `created` (or is a hand-made record).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from pyro_mcp.errors import InvalidArgumentError, NotFoundError, WrongStateError
from pyro_mcp.sdk import Pyro
from pyro_mcp.state import network as slots


@pytest.fixture
def pyro() -> Pyro:
    return Pyro()  # cache and state in this test's own directories


def rows(pyro: Pyro) -> list[dict[str, Any]]:
    return pyro.vms.store.list_vms()


@pytest.mark.parametrize(
    ("field", "value", "bounds"),
    [
        ("vcpu_count", 0, "1 and 8"),
        ("vcpu_count", 9, "1 and 8"),
        ("mem_mib", 100, "256 and 32768"),
        ("mem_mib", 40000, "256 and 32768"),
        ("ttl_seconds", 10, "60 and 86400"),
    ],
)
def test_create_vm_refuses_out_of_range_resources(
    pyro: Pyro, field: str, value: int, bounds: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=f"{field} must be between {bounds}"):
        pyro.create_vm(environment="debian:12", **{field: value})
    with pytest.raises(InvalidArgumentError, match=f"{field} must be between {bounds}"):
        pyro.run_in_vm(environment="debian:12", command="true", **{field: value})
    assert rows(pyro) == []


def test_a_networked_vm_holds_an_uplink_slot_until_it_is_deleted(pyro: Pyro) -> None:
    vm = pyro.create_vm(environment="debian:12", network=True)
    assert vm["network_enabled"] is True and vm["guest_ip"] == "172.16.0.2"
    assert vm["tap_name"] == "tap0"
    info = pyro.network_info_vm(vm["vm_id"])
    assert info["network_enabled"] is True and info["outbound_connectivity_expected"] is False
    assert info["gateway_ip"] == "172.16.0.1" and info["dns_servers"] == ["172.16.0.1"]
    assert slots.held(pyro.vms.store) == {vm["vm_id"]: 0}
    pyro.delete_vm(vm["vm_id"])
    assert slots.held(pyro.vms.store) == {}


def test_a_vm_without_network_says_why(pyro: Pyro) -> None:
    vm = pyro.create_vm(environment="debian:12")
    info = pyro.network_info_vm(vm["vm_id"])
    assert info["network_enabled"] is False and "no network device" in info["reason"]
    assert slots.held(pyro.vms.store) == {}


def test_network_must_be_a_boolean(pyro: Pyro) -> None:
    with pytest.raises(InvalidArgumentError, match="network must be true or false"):
        pyro.create_vm(environment="debian:12", network="yes")  # type: ignore[arg-type]
    assert rows(pyro) == []


def test_an_unknown_environment_lists_the_known_ones(pyro: Pyro) -> None:
    with pytest.raises(NotFoundError, match="unknown environment 'debian:99'") as caught:
        pyro.create_vm(environment="debian:99")
    assert caught.value.hint is not None and "debian:12" in caught.value.hint
    with pytest.raises(NotFoundError, match="unknown environment"):
        pyro.run_in_vm(environment="debian:99", command="true")
    assert rows(pyro) == []


def test_an_unknown_vm_id_is_not_found_everywhere(pyro: Pyro) -> None:
    calls = {
        "start_vm": lambda: pyro.start_vm("nosuchvm"),
        "status_vm": lambda: pyro.status_vm("nosuchvm"),
        "exec_vm": lambda: pyro.exec_vm("nosuchvm", command="true"),
        "stop_vm": lambda: pyro.stop_vm("nosuchvm"),
        "delete_vm": lambda: pyro.delete_vm("nosuchvm"),
        "network_info_vm": lambda: pyro.network_info_vm("nosuchvm"),
    }
    for name, call in calls.items():
        with pytest.raises(NotFoundError, match="VM 'nosuchvm' does not exist"):
            call()
        assert name  # (keeps the failing call's name in the traceback)


def test_create_vm_records_a_created_vm_with_the_contract_keys(pyro: Pyro) -> None:
    before = time.time()
    vm = pyro.create_vm(environment="debian:12", vcpu_count=2, mem_mib=512, ttl_seconds=120)
    assert set(vm) >= {
        "vm_id", "environment", "environment_version", "vcpu_count", "mem_mib", "ttl_seconds",
        "created_at", "expires_at", "state", "network_enabled", "allow_host_compat",
        "guest_ip", "tap_name", "execution_mode", "metadata",
    }  # fmt: skip
    assert (vm["state"], vm["environment"], vm["vcpu_count"], vm["mem_mib"]) == (
        "created",
        "debian:12",
        2,
        512,
    )
    assert vm["network_enabled"] is False and vm["allow_host_compat"] is False
    assert vm["created_at"] >= before
    assert vm["expires_at"] == pytest.approx(vm["created_at"] + 120)
    assert pyro.status_vm(vm["vm_id"]) == vm
    info = pyro.network_info_vm(vm["vm_id"])
    assert (info["network_enabled"], info["outbound_connectivity_expected"]) == (False, False)
    assert "network" in info["reason"]


def test_stop_and_delete_a_vm_that_never_started(pyro: Pyro) -> None:
    vm_id = pyro.create_vm(environment="debian:12")["vm_id"]
    stopped = pyro.stop_vm(vm_id)
    assert (stopped["state"], stopped["stop_reason"]) == ("stopped", "stopped: stop_vm")
    with pytest.raises(WrongStateError, match="is stopped"):
        pyro.exec_vm(vm_id, command="true")
    assert pyro.delete_vm(vm_id) == {"vm_id": vm_id, "deleted": True, "reason": "explicit_delete"}
    with pytest.raises(NotFoundError):
        pyro.status_vm(vm_id)
    with pytest.raises(NotFoundError):
        pyro.delete_vm(vm_id)


def test_an_expired_vm_cannot_start_and_is_reaped(pyro: Pyro) -> None:
    old = pyro.create_vm(environment="debian:12")["vm_id"]
    fresh = pyro.create_vm(environment="debian:12")["vm_id"]
    assert pyro.reap_expired() == {"deleted_vm_ids": [], "count": 0}
    pyro.vms.store.update_vm(old, expires_at=time.time() - 1)
    with pytest.raises(WrongStateError, match="expired"):
        pyro.start_vm(old)
    assert pyro.reap_expired() == {"deleted_vm_ids": [old], "count": 1}
    assert [row["vm_id"] for row in rows(pyro)] == [fresh]
