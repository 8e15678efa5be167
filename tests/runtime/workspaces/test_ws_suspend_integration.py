"""stop keeps a workspace's memory, start resumes it (QEMU TCG on this host): a service keeps
its pid and answers on its published port again, a shell keeps its scrollback and a running
python3 REPL its variables; a stopped workspace holds no VMM; a damaged memory snapshot
makes start boot fresh from the disk and say why. `leak_guard` (framework/vm_leaks.py)
proves afterwards that nothing was left. Nothing asserts a duration.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from framework.published import http_get
from framework.waiting import wait_until
from pyro_mcp.runtime.workspaces import suspend
from pyro_mcp.sdk import Pyro

if TYPE_CHECKING:
    from framework.fake_internet import FakeInternet
    from framework.vm_leaks import LeakGuard

pytestmark = [pytest.mark.integration, pytest.mark.vm]

ENV = "debian:12"
WAIT = 60.0


class Shell:
    def __init__(self, pyro: Pyro, wid: str) -> None:
        self.pyro, self.wid = pyro, wid
        self.sid = pyro.open_shell(wid)["shell_id"]
        self.text = ""

    def read_until(self, pattern: str) -> None:
        def look() -> bool:
            got = self.pyro.read_shell(self.wid, self.sid, cursor=len(self.text))
            self.text += got["output"]
            return re.search(pattern, self.text) is not None

        wait_until(look, f"{pattern!r} in the shell", WAIT)


def test_stop_start_resumes_services_shells_and_a_repl(
    net_pyro: Pyro, fake_internet: FakeInternet, leak_guard: LeakGuard
) -> None:
    pyro = net_pyro
    wid = pyro.create_workspace(environment=ENV, network_policy="egress+published-ports")[
        "workspace_id"
    ]
    web = pyro.start_service(
        wid, "web", command="exec python3 -m http.server 8080",
        readiness={"type": "http", "url": "http://127.0.0.1:8080/"}, ready_timeout_seconds=120,
        published_ports=[{"guest_port": 8080}],
    )  # fmt: skip
    host_port, pid = web["published_ports"][0]["host_port"], web["pid"]
    assert http_get(host_port).startswith(b"HTTP/1.0 200")
    shell = Shell(pyro, wid)
    pyro.write_shell(wid, shell.sid, input="echo before-stop-$((6*7)); python3 -q")
    shell.read_until(r"before-stop-42\r\n(.|\n)*>>> $")
    pyro.write_shell(wid, shell.sid, input="x = 'kept' * 2")
    shell.read_until(r">>> $")
    scrollback = shell.text

    stopped = pyro.stop_workspace(wid)
    assert stopped["state"] == "stopped"
    assert stopped["workspace_stop"] == {"memory_kept": True, "note": ""}
    assert leak_guard.qemus_in_state() == [] and leak_guard.own_vmms() == []
    assert suspend.held(pyro.workspaces.directory(wid))
    # a stopped workspace answers from its records, and its service waits, paused
    assert pyro.status_service(wid, "web")["state"] == "running"

    started = pyro.start_workspace(wid)
    assert started["workspace_start"] == {"resumed": True, "note": ""}, started
    assert started["metadata"]["boot_mode"] == "resumed"
    assert not suspend.held(pyro.workspaces.directory(wid))
    status = pyro.status_service(wid, "web")
    assert (status["state"], status["pid"]) == ("running", pid)
    assert status["published_ports"][0]["host_port"] == host_port
    assert http_get(host_port).startswith(b"HTTP/1.0 200")
    again = pyro.read_shell(wid, shell.sid, cursor=0)["output"]
    assert again.startswith(scrollback[:200]) and "before-stop-42" in again
    shell.text = again
    pyro.write_shell(wid, shell.sid, input="print(x, 6 * 7)")
    shell.read_until(r"keptkept 42\r\n")
    # the guest's clock moved on with the host's
    done = pyro.exec_workspace(wid, command="date +%s")
    assert abs(int(done["stdout"]) - int(started["last_activity_at"])) < 120
    pyro.delete_workspace(wid)


def test_a_damaged_memory_snapshot_boots_fresh_and_says_why(
    vm_pyro: Pyro, leak_guard: LeakGuard
) -> None:
    pyro = vm_pyro
    wid = pyro.create_workspace(environment=ENV)["workspace_id"]
    pyro.exec_workspace(wid, command="echo kept > /workspace/f; sync")
    assert pyro.stop_workspace(wid)["workspace_stop"]["memory_kept"] is True
    state = pyro.workspaces.directory(wid) / suspend.DIR / suspend.STATE
    with state.open("r+b") as handle:  # garbage in the middle of guest RAM
        handle.seek(state.stat().st_size // 2)
        handle.write(b"\xde\xad\xbe\xef" * 1024)
    started = pyro.start_workspace(wid)
    assert started["workspace_start"]["resumed"] is False
    assert "damaged" in started["workspace_start"]["note"], started["workspace_start"]
    assert started["metadata"]["boot_mode"] == "cold"
    assert pyro.exec_workspace(wid, command="cat /workspace/f")["stdout"] == "kept\n"
    assert not suspend.held(pyro.workspaces.directory(wid))
    # and the next stop keeps memory again
    assert pyro.stop_workspace(wid)["workspace_stop"]["memory_kept"] is True
    assert pyro.start_workspace(wid)["workspace_start"]["resumed"] is True
    assert pyro.exec_workspace(wid, command="cat /workspace/f")["stdout"] == "kept\n"
    pyro.delete_workspace(wid)
