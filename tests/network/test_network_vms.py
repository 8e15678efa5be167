"""Networked VMs for real, inside the fake internet: what a guest reaches under each policy and
allowlist, and that nothing of a VM's network outlives it, however it ends.

Every VM here runs with pyro inside the harness's pyro-host namespace (`net_pyro`), whose
only routes lead to the fake internet; the guest's resolver is the test DNS server.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

from framework.fake_internet import ADDRESSES, FakeInternet
from framework.net_vms import TEARDOWN_WAIT_S, assert_no_network_leftovers, uplinks
from framework.waiting import wait_until
from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.host.process import ProcessRef
from pyro_mcp.network.addressing import Uplink
from pyro_mcp.sdk import Pyro

pytestmark = [pytest.mark.integration, pytest.mark.vm]

# Connects to each target at once and prints what came back: a body, "echo:...", or why not.
PROBE = r"""
import concurrent.futures, json, socket, sys
def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        conn = socket.create_connection((host, int(port)), timeout=3)
    except socket.gaierror:
        return "dns-error"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"refused" if exc.errno == 111 else f"error:{exc.errno}"
    with conn:
        conn.settimeout(5)
        if port == "7":
            conn.sendall(b"ping")
            conn.shutdown(socket.SHUT_WR)
            return "echo:" + conn.recv(64).decode()
        conn.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        return data.split(b"\r\n\r\n", 1)[-1].decode().strip()
targets = sys.argv[1:]
with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(dict(zip(targets, pool.map(probe, targets)))))
"""
WEB, OTHER = f"{ADDRESSES.web}:80", f"{ADDRESSES.other}:80"
ECHO = f"{ADDRESSES.echo}:7"
PRIVATE, METADATA = f"{ADDRESSES.private}:80", f"{ADDRESSES.metadata}:80"
HOST, DNS_TCP = f"{ADDRESSES.host}:8080", f"{ADDRESSES.dns}:53"


def probe(pyro: Pyro, workspace_id: str, *targets: str) -> dict[str, str]:
    result = pyro.exec_workspace(workspace_id, command=["python3", "-c", PROBE, *targets])
    assert result["exit_code"] == 0, result["stderr"]
    found: dict[str, str] = json.loads(result["stdout"])
    return found


def create(pyro: Pyro, **kwargs: Any) -> str:
    workspace = pyro.create_workspace(environment="debian:12", ttl_seconds=600, **kwargs)
    return str(workspace["workspace_id"])


def vm_of(pyro: Pyro, workspace_id: str) -> dict[str, Any]:
    row = pyro.vms.store.get("workspaces", workspace_id)
    assert row is not None and row["vm_id"]
    vm = pyro.vms.store.get_vm(row["vm_id"])
    assert vm is not None
    return vm


def test_egress_reaches_public_addresses_and_nothing_else(
    net_pyro: Pyro, fake_internet: FakeInternet
) -> None:
    ws = create(net_pyro, network_policy="egress")
    view = net_pyro.status_workspace(ws)
    assert view["network_enabled"] is True and view["guest_ip"] == "172.16.0.2"
    assert view["metadata"]["boot_mode"] == "restored"  # the snapshot carries the NIC
    assert len(uplinks(fake_internet)) == 1
    uplink = Uplink.of(int(vm_of(net_pyro, ws)["net_slot"]))
    got = probe(
        net_pyro, ws, WEB, "web.pyro.test:80", "alias.pyro.test:80", ECHO, PRIVATE, METADATA,
        HOST, f"{uplink.host_ip}:8080", f"{ADDRESSES.gateway}:1", "127.0.0.1:8080",
    )  # fmt: skip
    assert got[WEB] == got["web.pyro.test:80"] == got["alias.pyro.test:80"] == "web-ok"
    assert got[ECHO] == "echo:ping"
    # RFC 1918, cloud metadata, the host's own addresses: silently dropped.
    assert got[PRIVATE] == got[METADATA] == got[HOST] == "timeout"
    assert got[f"{uplink.host_ip}:8080"] == "timeout"
    # A public address that nothing listens on answers, as the internet would.
    assert got[f"{ADDRESSES.gateway}:1"] == "refused"
    assert got["127.0.0.1:8080"] == "refused"  # the guest's own loopback, not the host's
    net_pyro.delete_workspace(ws)
    assert_no_network_leftovers(fake_internet, net_pyro)


def test_an_allowlist_by_name_and_cidr_changes_on_a_running_workspace(
    net_pyro: Pyro, fake_internet: FakeInternet
) -> None:
    fake_internet.reset_queries()
    ws = create(net_pyro, network_policy="egress", allow_hosts=["web.pyro.test"])
    assert net_pyro.status_workspace(ws)["allow_hosts"] == ["web.pyro.test"]
    before = probe(net_pyro, ws, WEB)  # by address, before any name led there
    assert before[WEB] == "timeout"
    got = probe(net_pyro, ws, "web.pyro.test:80", "other.pyro.test:80", OTHER, DNS_TCP)
    assert got["web.pyro.test:80"] == "web-ok"
    assert got["other.pyro.test:80"] == "dns-error"
    assert fake_internet.queries("other.pyro.test") == 0  # refused before it left the VM
    assert got[OTHER] == "timeout"
    assert got[DNS_TCP] == "timeout"  # another resolver (DoH to an IP alike) reaches nothing
    net_pyro.update_workspace(ws, allow_hosts=[f"{ADDRESSES.other}/32"])
    got = probe(net_pyro, ws, OTHER, "web.pyro.test:80")
    assert got[OTHER] == "other-ok" and got["web.pyro.test:80"] == "dns-error"
    net_pyro.update_workspace(ws, clear_allow_hosts=True)
    got = probe(net_pyro, ws, OTHER, WEB, PRIVATE)
    assert (got[OTHER], got[WEB], got[PRIVATE]) == ("other-ok", "web-ok", "timeout")
    net_pyro.delete_workspace(ws)
    assert_no_network_leftovers(fake_internet, net_pyro)


def test_off_means_no_network_device(net_pyro: Pyro, fake_internet: FakeInternet) -> None:
    ws = create(net_pyro)
    listing = net_pyro.exec_workspace(ws, command="ls /sys/class/net")
    assert listing["stdout"].split() == ["lo"]
    assert uplinks(fake_internet) == []
    with pytest.raises(InvalidArgumentError, match="no network"):
        net_pyro.update_workspace(ws, allow_hosts=["web.pyro.test"])
    net_pyro.delete_workspace(ws)


def test_one_shot_runs_with_and_without_network(
    net_pyro: Pyro, fake_internet: FakeInternet
) -> None:
    on = net_pyro.run_in_vm(environment="debian:12", command=["python3", "-c", PROBE, WEB, PRIVATE],
                            network=True)  # fmt: skip
    assert json.loads(on["stdout"]) == {WEB: "web-ok", PRIVATE: "timeout"}
    off = net_pyro.run_in_vm(environment="debian:12", command="ls /sys/class/net")
    assert off["stdout"].split() == ["lo"]
    assert_no_network_leftovers(fake_internet, net_pyro)


def test_guests_cannot_reach_each_other(net_pyro: Pyro, fake_internet: FakeInternet) -> None:
    server = create(net_pyro, network_policy="egress")
    client = create(net_pyro, network_policy="egress")
    net_pyro.exec_workspace(server, command="setsid python3 -m http.server 8080 >/dev/null 2>&1 &")
    wait_until(
        lambda: probe(net_pyro, server, "127.0.0.1:8080")["127.0.0.1:8080"] != "refused",
        "the guest's own server to listen",
    )
    theirs = Uplink.of(int(vm_of(net_pyro, server)["net_slot"]))
    targets = [f"{theirs.vm_ip}:8080", f"{theirs.host_ip}:8080", "172.16.0.1:8080"]
    got = probe(net_pyro, client, *targets)
    assert got[targets[0]] == got[targets[1]] == "timeout"
    assert got[targets[2]] == "timeout"  # its own gateway: only DNS answers there
    net_pyro.delete_workspace(server)
    net_pyro.delete_workspace(client)
    assert_no_network_leftovers(fake_internet, net_pyro)


@pytest.mark.parametrize("victim", ["supervisor", "vmm"])
def test_sigkill_leaves_nothing_of_the_vm_network(
    net_pyro: Pyro, fake_internet: FakeInternet, leak_guard: Any, victim: str
) -> None:
    ws = create(net_pyro, network_policy="egress")
    vm = vm_of(net_pyro, ws)
    supervisor = ProcessRef(vm["supervisor_pid"], vm["supervisor_start"])
    target = supervisor if victim == "supervisor" else leak_guard.vmm_of(supervisor)
    assert len(uplinks(fake_internet)) == 1
    os.kill(target.pid, signal.SIGKILL)
    wait_until(lambda: not supervisor.alive(), "the supervisor to be gone")
    wait_until(lambda: uplinks(fake_internet) == [], "the VM's namespace freed", TEARDOWN_WAIT_S)
    view = net_pyro.status_workspace(ws)  # reconciles: the slot goes with the dead VM
    assert view["state"] == "stopped"
    assert_no_network_leftovers(fake_internet, net_pyro)
    net_pyro.start_workspace(ws)  # and it comes back with a working network
    assert probe(net_pyro, ws, WEB)[WEB] == "web-ok"
    net_pyro.delete_workspace(ws)
    assert_no_network_leftovers(fake_internet, net_pyro)


def test_networked_one_shot_vms_come_from_standby(
    net_pyro: Pyro, fake_internet: FakeInternet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYRO_STANDBY", "1")
    first = net_pyro.create_vm(environment="debian:12", network=True)
    net_pyro.start_vm(first["vm_id"])  # restores, and starts a networked standby VM
    wait_until(lambda: _standby_ready(net_pyro), "a networked standby VM")
    second = net_pyro.create_vm(environment="debian:12", network=True)
    assert net_pyro.start_vm(second["vm_id"])["metadata"]["boot_mode"] == "standby"
    info = net_pyro.network_info_vm(second["vm_id"])
    assert info["outbound_connectivity_expected"] is True
    done = net_pyro.exec_vm(second["vm_id"], command=["python3", "-c", PROBE, WEB, PRIVATE])
    assert json.loads(done["stdout"]) == {WEB: "web-ok", PRIVATE: "timeout"}
    net_pyro.delete_vm(first["vm_id"])
    net_pyro.vms.clear_standby()
    assert_no_network_leftovers(fake_internet, net_pyro)


def _standby_ready(pyro: Pyro) -> bool:
    rows = pyro.vms.store.list_vms()
    return any(r["state"] == "standby" and r["network_enabled"] for r in rows)
