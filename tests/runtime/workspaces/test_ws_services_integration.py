"""Workspace services against real VMs (QEMU TCG here): readiness of each kind, failures and
what they leave in the guest, logs, stop, records that outlive the VM, and published ports
reached from the host, inside the fake internet.

Services are driven through the runtime (`pyro.manager.services`); the SDK, CLI and MCP
faces are wired on top of it. Every wait is for a state (a guest process gone, a port
refusing), never for a time. `test_slow_...` waits 90 s in the guest on purpose: deselect it
with `-k "not slow"` for a quicker run.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from framework.fake_internet import FakeInternet
from framework.net_vms import assert_no_network_leftovers
from framework.published import http_get, refused
from framework.waiting import wait_until
from pyro_mcp.errors import ConflictError, InvalidArgumentError, NotFoundError
from pyro_mcp.runtime.workspaces.services import WorkspaceServices, readiness_from_options
from pyro_mcp.sdk import Pyro

pytestmark = [pytest.mark.integration, pytest.mark.vm]

ENV = "debian:12"
SERVICE_KEYS = {
    "workspace_id", "service_name", "state", "command", "cwd", "started_at", "ended_at",
    "exit_code", "pid", "execution_mode", "readiness", "ready_at", "stop_reason",
    "published_ports",
}  # fmt: skip
TOUCH = "sleep 0.3; touch {0}; exec sleep 1000"
NEVER = {"type": "file", "path": "never-there"}
# Which processes of session SID still live, read from the guest's /proc.
SESSION = r"""
import os, sys
sid, alive = int(sys.argv[1]), []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if int(fields[3]) == sid and fields[0] not in "ZX":
        alive.append(int(pid))
print(alive)
"""


def services(pyro: Pyro) -> WorkspaceServices:
    return pyro.manager.services


def guest(pyro: Pyro, workspace_id: str, command: Any) -> str:
    result = pyro.exec_workspace(workspace_id, command=command, timeout_seconds=120)
    assert result["exit_code"] == 0, result
    return str(result["stdout"])


def session_alive(pyro: Pyro, workspace_id: str, pid: int) -> list[int]:
    found: list[int] = json.loads(guest(pyro, workspace_id, ["python3", "-c", SESSION, str(pid)]))
    return found


def test_readiness_failures_validation_logs_and_stop(vm_pyro: Pyro) -> None:
    pyro, svc = vm_pyro, services(vm_pyro)
    wid = pyro.create_workspace(environment=ENV)["workspace_id"]
    ready = {
        "file": ("sleep 0.3; touch f.ready; exec sleep 1000", {"type": "file", "path": "f.ready"}),
        "tcp": ("exec python3 -m http.server 8001", {"type": "tcp", "address": "127.0.0.1:8001"}),
        "http": ("exec python3 -m http.server 8002", {"type": "http", "url": "http://127.0.0.1:8002/"}),
        "command": (TOUCH.format("c.ready"), {"type": "command", "command": "test -f c.ready"}),
    }  # fmt: skip
    for kind, (command, readiness) in ready.items():
        view = svc.start(wid, kind, command=command, readiness=readiness, ready_timeout_seconds=120)
        assert set(view) == SERVICE_KEYS and view["workspace_id"] == wid
        assert (view["state"], view["stop_reason"], view["published_ports"]) == (
            "running",
            None,
            [],
        )
        assert view["ready_at"] >= view["started_at"] and view["command"] == command
        assert view["execution_mode"] == pyro.status_workspace(wid)["execution_mode"]
    assert svc.status(wid, "file")["readiness"] == {"type": "file", "path": "/workspace/f.ready"}

    early = svc.start(wid, "early", command="exit 3", readiness=NEVER)
    assert (early["state"], early["stop_reason"], early["exit_code"]) == (
        "failed", "process_exited_before_ready", 3,
    )  # fmt: skip
    slow = svc.start(wid, "slow", command="sleep 1000 & sleep 1000", readiness=NEVER,
                     ready_timeout_seconds=3, ready_interval_ms=200)  # fmt: skip
    assert (slow["state"], slow["stop_reason"]) == ("failed", "readiness_timeout")
    assert session_alive(pyro, wid, slow["pid"]) == []  # the background sleep went too

    # Refused before anything runs.
    bad: list[tuple[dict[str, Any], str]] = [
        ({"readiness": {"type": "file", "path": "a", "url": "http://x/"}}, "at most one"),
        ({"cwd": "/etc"}, "outside /workspace"),
        ({"readiness": {"type": "file", "path": "/etc/passwd"}}, "outside /workspace"),
        ({"published_ports": [{"guest_port": 8000}]},
         r"published ports require workspace network_policy 'egress\+published-ports'"),
    ]  # fmt: skip
    for options, match in bad:
        with pytest.raises(InvalidArgumentError, match=match):
            svc.start(wid, "bad", command="true", **options)
    with pytest.raises(InvalidArgumentError, match="service name"):
        svc.start(wid, "../x", command="true")
    with pytest.raises(InvalidArgumentError, match="at most one readiness check"):
        readiness_from_options(ready_file="a", ready_tcp="127.0.0.1:1")
    with pytest.raises(ConflictError, match=f"'file' is already running in workspace {wid}"):
        svc.start(wid, "file", command="true")
    with pytest.raises(NotFoundError, match=f"'ghost' does not exist in workspace {wid}"):
        svc.status(wid, "ghost")

    chatty = (
        "for i in $(seq 300); do echo line$i; done; echo oops >&2; touch l.ready; exec sleep 1000"
    )
    svc.start(wid, "chatty", command=chatty, readiness={"type": "file", "path": "l.ready"})
    tail = svc.logs(wid, "chatty")
    assert tail["stdout"].splitlines() == [f"line{i}" for i in range(101, 301)]
    assert (tail["stderr"], tail["tail_lines"], tail["truncated"]) == ("oops\n", 200, False)
    everything = svc.logs(wid, "chatty", all=True)
    assert len(everything["stdout"].splitlines()) == 300 and everything["tail_lines"] is None

    stubborn = "trap '' TERM; touch s.ready; while :; do sleep 1; done"
    svc.start(wid, "stubborn", command=stubborn, readiness={"type": "file", "path": "s.ready"})
    killed = svc.stop(wid, "stubborn")
    assert (killed["state"], killed["stop_reason"], killed["exit_code"]) == (
        "stopped",
        "sigkill",
        137,
    )
    assert session_alive(pyro, wid, killed["pid"]) == []
    termed = svc.stop(wid, "tcp")
    assert (termed["state"], termed["stop_reason"]) == ("stopped", "sigterm")

    listing = svc.list(wid)
    assert listing["count"] == 8 and listing["running_count"] == 4  # file, http, command, chatty
    assert [s["service_name"] for s in listing["services"]][:4] == list(ready)
    pyro.delete_workspace(wid)


def test_exits_are_recorded_by_the_guest_and_records_outlive_the_vm(vm_pyro: Pyro) -> None:
    pyro, svc = vm_pyro, services(vm_pyro)
    wid = pyro.create_workspace(environment=ENV)["workspace_id"]
    job = svc.start(wid, "job", command="while [ ! -f go ]; do sleep 0.1; done; exit 7")
    keeper = svc.start(wid, "keeper", command="exec sleep 1000")
    # The job exits in the guest; no service call happens until its pid is gone from /proc,
    # which only the agent reaping it (and recording the exit code) makes happen.
    guest(pyro, wid, f"touch go; while [ -e /proc/{job['pid']} ]; do sleep 0.05; done")
    status = svc.status(wid, "job")
    assert (status["state"], status["exit_code"], status["stop_reason"]) == ("exited", 7, None)

    # stop keeps the guest's memory: the keeper waits, paused, and goes on after start
    assert pyro.stop_workspace(wid)["workspace_stop"]["memory_kept"] is True
    stopped = {s["service_name"]: (s["state"], s["stop_reason"]) for s in svc.list(wid)["services"]}
    assert stopped == {"job": ("exited", None), "keeper": ("running", None)}
    paused = svc.logs(wid, "keeper")  # its logs are in the stopped guest's memory
    assert (paused["stdout"], paused["stderr"], paused["truncated"]) == ("", "", True)
    assert pyro.start_workspace(wid)["workspace_start"]["resumed"] is True
    after_start = svc.list(wid)
    assert after_start["running_count"] == 1 and after_start["count"] == 2
    assert svc.status(wid, "keeper")["pid"] == keeper["pid"]
    assert svc.stop(wid, "keeper")["state"] == "stopped"

    again = svc.start(wid, "keeper", command="exec sleep 1000")
    assert again["state"] == "running" and again["started_at"] > keeper["started_at"]
    pyro.reset_workspace(wid)
    reset = svc.status(wid, "keeper")
    assert (reset["state"], reset["stop_reason"]) == ("stopped", "workspace_reset")
    pyro.delete_workspace(wid)


def test_slow_a_90_s_readiness_wait_succeeds(vm_pyro: Pyro) -> None:
    """No fixed host timeout sits under a start: the host waits as long as readiness may."""
    pyro, svc = vm_pyro, services(vm_pyro)
    wid = pyro.create_workspace(environment=ENV)["workspace_id"]
    view = svc.start(wid, "late", command="sleep 90; touch late.ready; exec sleep 1000",
                     readiness={"type": "file", "path": "late.ready"},
                     ready_timeout_seconds=120)  # fmt: skip
    assert view["state"] == "running" and view["ready_at"] - view["started_at"] >= 90
    pyro.delete_workspace(wid)


# --- published ports, inside the fake internet -----------------------------------------------


def web(svc: WorkspaceServices, wid: str, name: str, port: int, **options: Any) -> dict[str, Any]:
    return svc.start(
        wid, name, command=f"exec python3 -m http.server {port}",
        readiness={"type": "http", "url": f"http://127.0.0.1:{port}/"},
        ready_timeout_seconds=120, **options,
    )  # fmt: skip


def test_published_ports_live_exactly_as_long_as_their_service(
    net_pyro: Pyro, fake_internet: FakeInternet
) -> None:
    pyro, svc = net_pyro, services(net_pyro)
    wid = pyro.create_workspace(environment=ENV, network_policy="egress+published-ports")[
        "workspace_id"
    ]
    view = web(svc, wid, "web", 8080, published_ports=[{"guest_port": 8080}])
    (port,) = view["published_ports"]
    assert port["host"] == "127.0.0.1" and port["guest_port"] == 8080 and port["protocol"] == "tcp"
    host_port = port["host_port"]
    assert http_get(host_port).startswith(b"HTTP/1.0 200")
    svc.status(wid, "web")
    svc.logs(wid, "web")
    assert svc.list(wid)["services"][0]["published_ports"] == [port]
    assert http_get(host_port).startswith(b"HTTP/1.0 200")  # status and logs left it open
    stopped = svc.stop(wid, "web")
    assert stopped["published_ports"] == [] and refused(host_port)

    # The service exiting by itself closes its port, with no call of ours in between.
    once = web(svc, wid, "once", 8081, published_ports=[{"guest_port": 8081}])
    once_port = once["published_ports"][0]["host_port"]
    guest(pyro, wid, f"kill {once['pid']}")
    wait_until(lambda: refused(once_port), "the exited service's port to close", 60)
    assert svc.status(wid, "once")["state"] == "exited"

    # A taken host port: a clear error, and nothing left running.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        with pytest.raises(ConflictError, match=f"host port {busy} on 127.0.0.1 is already in use"):
            web(svc, wid, "taken", 8082, published_ports=[{"guest_port": 8082, "host_port": busy}])
    assert "taken" not in {s["service_name"] for s in svc.list(wid)["services"]}
    commands = guest(pyro, wid, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; true")
    assert "http.server 8082" not in commands

    last = web(svc, wid, "last", 8083, published_ports=[{"guest_port": 8083}])
    last_port = last["published_ports"][0]["host_port"]
    assert http_get(last_port).startswith(b"HTTP/1.0 200")
    pyro.delete_workspace(wid)
    assert refused(last_port)
    assert_no_network_leftovers(fake_internet, pyro)
