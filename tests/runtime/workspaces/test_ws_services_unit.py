"""Workspace services without a VM: arguments refused before anything runs, the CLI/MCP
helpers, and the records that answer for a workspace that is not running (the guest-side
behaviour is in test_ws_services_integration.py and tests/agent/test_services.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from pyro_mcp import paths
from pyro_mcp.errors import InvalidArgumentError, NotFoundError, WrongStateError
from pyro_mcp.runtime.workspaces.services import (
    WorkspaceServices,
    parse_publish,
    readiness_from_options,
)
from pyro_mcp.sdk import Pyro
from pyro_mcp.state import services as service_rows
from pyro_mcp.state.schema import SERVICE_COLUMNS

WID = "abc123def456"


def put_workspace(pyro: Pyro, state: str = "stopped", **fields: Any) -> None:
    now = time.time()
    directory = paths.ensure_private_dir(pyro.workspaces.directory(WID))
    pyro.vms.store.insert("workspaces", {
        "workspace_id": WID, "environment": "debian:12", "environment_version": "1",
        "vcpu_count": 1, "mem_mib": 1024, "ttl_seconds": 600, "created_at": now,
        "last_activity_at": now, "expires_at": now + 600, "state": state,
        "workspace_dir": str(directory), "seed": json.dumps({"mode": "empty"}), **fields,
    })  # fmt: skip


def put_service(pyro: Pyro, name: str, state: str = "running", **fields: Any) -> None:
    row: dict[str, Any] = dict.fromkeys(SERVICE_COLUMNS)
    row.update(
        workspace_id=WID, service_name=name, run_id="0123456789abcdef", vm_id="gone",
        state=state, command="serve", cwd="/workspace", started_at=1.0, recorded_at=1.0,
        published_ports=json.dumps([{"host_port": 40000, "guest_port": 80}]),
        execution_mode="qemu-tcg", readiness=json.dumps({"type": "file", "path": "/workspace/r"}),
    )  # fmt: skip
    row.update(fields)
    service_rows.put(pyro.vms.store, row)


@pytest.fixture
def pyro() -> Pyro:
    return Pyro()


def test_publish_options_as_the_cli_writes_them() -> None:
    assert parse_publish("8080:80") == {"guest_port": 80, "host_port": 8080}
    assert parse_publish("80") == {"guest_port": 80, "host_port": None}
    for bad in ("x", "1:2:3", "80:", ":80", "0", "8080:70000", "80:80"):
        with pytest.raises(InvalidArgumentError):
            parse_publish(bad)


def test_readiness_options_become_one_check() -> None:
    assert readiness_from_options() is None
    assert readiness_from_options(ready_file="r") == {"type": "file", "path": "r"}
    assert readiness_from_options(ready_tcp="127.0.0.1:5432") == {
        "type": "tcp", "address": "127.0.0.1:5432",
    }  # fmt: skip
    assert readiness_from_options(ready_http="http://x/")["type"] == "http"  # type: ignore[index]
    assert readiness_from_options(ready_command="true") == {"type": "command", "command": "true"}
    with pytest.raises(InvalidArgumentError, match="ready_file and ready_http"):
        readiness_from_options(ready_file="r", ready_http="http://x/")
    with pytest.raises(InvalidArgumentError, match="HOST:PORT"):
        readiness_from_options(ready_tcp="nope")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"service_name": "../x"}, "service name"),
        ({"command": ""}, "command is empty"),
        ({"cwd": "/etc"}, "outside /workspace"),
        ({"readiness": {"type": "file", "path": "r", "command": "x"}}, "at most one"),
        ({"readiness": "r"}, "must be a dict"),
        ({"ready_timeout_seconds": 0}, "ready_timeout"),
        ({"ready_interval_ms": 0}, "ready_interval_ms"),
        ({"published_ports": [{"guest_port": 80, "host_port": 22}]}, "host_port"),
    ],
)
def test_bad_starts_are_refused_before_any_workspace_is_looked_at(
    pyro: Pyro, options: dict[str, Any], match: str
) -> None:
    args: dict[str, Any] = {"service_name": "web", "command": "serve", **options}
    with pytest.raises(InvalidArgumentError, match=match):
        WorkspaceServices(pyro.workspaces).start("no-such-workspace", **args)


def test_a_stopped_workspace_answers_from_its_records(pyro: Pyro) -> None:
    put_workspace(pyro)
    put_service(pyro, "web")  # its VM's end was never recorded (a call died mid-way)
    put_service(pyro, "job", state="exited", exit_code=3, ended_at=2.0, published_ports="[]")
    svc = pyro.manager.services
    listing = svc.list(WID)
    assert (listing["count"], listing["running_count"]) == (2, 0)
    web = svc.status(WID, "web")
    assert (web["state"], web["stop_reason"], web["published_ports"]) == (
        "stopped", "workspace_stopped", [],
    )  # fmt: skip
    assert web["readiness"] == {"type": "file", "path": "/workspace/r"}
    assert web["execution_mode"] == "qemu-tcg" and web["ended_at"] is not None
    logs = svc.logs(WID, "job", tail_lines=5)
    assert (logs["stdout"], logs["stderr"], logs["truncated"], logs["tail_lines"]) == (
        "", "", True, 5,
    )  # fmt: skip
    assert svc.logs(WID, "job", all=True)["tail_lines"] is None
    assert svc.stop(WID, "job")["state"] == "exited"  # ended already: as it is
    with pytest.raises(NotFoundError, match=f"service 'ghost' does not exist in workspace {WID}"):
        svc.status(WID, "ghost")
    with pytest.raises(WrongStateError, match="needs it started"):
        svc.start(WID, "new", command="serve")
    assert service_rows.counts_of(pyro.vms.store, WID) == (2, 0)


def test_a_workspace_whose_vm_died_ends_its_services(pyro: Pyro) -> None:
    put_workspace(pyro, state="started", vm_id="vanished")
    put_service(pyro, "web", vm_id="vanished")
    assert pyro.status_workspace(WID)["state"] == "stopped"  # reconciled: the VM is gone
    row = service_rows.get(pyro.vms.store, WID, "web")
    assert row is not None and (row["state"], row["stop_reason"]) == (
        "stopped",
        "workspace_stopped",
    )


def test_deleting_a_workspace_deletes_its_service_records(pyro: Pyro) -> None:
    put_workspace(pyro)
    put_service(pyro, "web")
    pyro.delete_workspace(WID)
    assert service_rows.counts(pyro.vms.store) == {}
