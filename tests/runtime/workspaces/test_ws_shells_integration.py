"""Interactive shells in real workspaces (QEMU TCG on this host), through WorkspaceShells.

Every call is a new connection to the guest, so every step also shows that a shell outlives
the client that opened it. Every test ends with the leak check of `leak_guard`
(framework/vm_leaks.py). Nothing asserts a duration.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest

from framework.waiting import wait_until
from pyro_mcp.errors import InvalidArgumentError, NotFoundError, WrongStateError
from pyro_mcp.protocol import shell_ops as so
from pyro_mcp.runtime.workspaces.shells import WorkspaceShells
from pyro_mcp.sdk import Pyro

if TYPE_CHECKING:
    from framework.vm_leaks import LeakGuard

pytestmark = [pytest.mark.integration, pytest.mark.vm]

ENV = "debian:12"
SHELL_KEYS = {
    "workspace_id", "shell_id", "cwd", "cols", "rows", "state", "started_at", "ended_at",
    "exit_code", "execution_mode",
}  # fmt: skip
WAIT = 60.0  # a guest under TCG on a busy host is slow; this is only how long to keep looking
# The live processes of one session in the guest, from /proc (the guest has python3).
SESSION_PIDS = (
    "import os, sys\n"
    "for p in filter(str.isdigit, os.listdir('/proc')):\n"
    "    try: f = open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()\n"
    "    except OSError: continue\n"
    "    if f[3] == sys.argv[1] and f[0] not in 'ZX': print(p)\n"
)


class Session:
    """One shell of one workspace, read onwards from where the last read stopped."""

    def __init__(self, shells: WorkspaceShells, workspace_id: str, **open_args: Any) -> None:
        self.shells, self.wid = shells, workspace_id
        self.view = shells.open(workspace_id, **open_args)
        self.sid, self.cursor, self.text = self.view["shell_id"], 0, ""
        self.until(re.escape("pyro$ "))

    def read(self, **kwargs: Any) -> dict[str, Any]:
        got = self.shells.read(self.wid, self.sid, cursor=self.cursor, **kwargs)
        assert got["cursor"] == self.cursor, "output was lost"
        self.text += got["output"]
        self.cursor = got["next_cursor"]
        return got

    def until(self, pattern: str) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def look() -> bool:
            self.read(wait_for_idle_ms=200)
            found[:] = [m] if (m := re.search(pattern, self.text)) else []
            return bool(found)

        wait_until(look, f"{pattern!r} in the shell's output", WAIT)
        return found[0]

    def flood(self, command: str, marker: str) -> None:
        """Run a command that prints more than the guest keeps, reading along without
        minding what the ring drops, until the marker and the next prompt."""
        self.shells.write(self.wid, self.sid, input=f"{command}; echo {marker[:1]}''{marker[1:]}")
        tail = ""

        def finished() -> bool:
            nonlocal tail
            got = self.shells.read(self.wid, self.sid, cursor=self.cursor, wait_for_idle_ms=200)
            self.cursor, tail = got["next_cursor"], (tail + got["output"])[-100:]
            return has_line(tail, marker) and tail.endswith("pyro$ ")

        wait_until(finished, f"{command!r} to finish", WAIT)
        self.text = tail

    def run(self, command: str, marker: str) -> str:
        """`command`, then the marker (typed split so only its output matches); the output
        from the command line to the marker's line."""
        start, half = len(self.text), len(marker) // 2
        self.shells.write(
            self.wid, self.sid, input=f"{command}; echo {marker[:half]}''{marker[half:]}"
        )
        end = self.until(rf"[\r\n]{re.escape(marker)}\r\n").end()
        return self.text[start:end]


def has_line(text: str, line: str) -> bool:
    return re.search(rf"[\r\n]{re.escape(line)}\r\n", text) is not None


def session_pids(pyro: Pyro, wid: str, sid: int) -> list[str]:
    done = pyro.exec_workspace(wid, command=["python3", "-c", SESSION_PIDS, str(sid)])
    assert done["exit_code"] == 0, done
    return list(done["stdout"].split())


def test_a_shell_in_a_real_guest(vm_pyro: Pyro, leak_guard: LeakGuard) -> None:
    pyro = vm_pyro
    shells = pyro.manager.shells
    wid = pyro.create_workspace(environment=ENV)["workspace_id"]
    pyro.exec_workspace(wid, command="mkdir -p sub")

    # open, and a round trip; the view is the contract's Shell
    one = Session(shells, wid)
    assert set(one.view) == SHELL_KEYS and one.view["state"] == "running"
    assert (one.view["cwd"], one.view["cols"], one.view["rows"]) == ("/workspace", 120, 30)
    assert one.view["execution_mode"] == pyro.status_workspace(wid)["execution_mode"]
    assert has_line(one.run("echo $((6*7)) $(pwd) $TERM", "m1"), "42 /workspace xterm-256color")
    written = shells.write(wid, one.sid, input="true", append_newline=False)
    assert (written["input_length"], written["append_newline"]) == (4, False)
    shells.write(wid, one.sid, input="", append_newline=True)

    # plain: colours gone, the \r redraw resolved; raw keeps the escapes
    start = one.cursor
    one.run(r"printf '\033[31mred\033[0m text\n'; printf 'step 10%%\rstep 100%%\n'", "m2")
    size = one.cursor - start
    raw = shells.read(wid, one.sid, cursor=start, max_chars=size)
    plain = shells.read(wid, one.sid, cursor=start, max_chars=size, plain=True)
    assert "\x1b[31mred\x1b[0m text" in raw["output"] and "\rstep 100%" in raw["output"]
    assert plain["plain"] is True and "\x1b" not in plain["output"]
    lines = plain["output"].split("\n")
    assert "red text" in lines and "step 100%" in lines and "step 10%" not in lines
    assert (plain["next_cursor"], plain["truncated"]) == (raw["next_cursor"], False)

    # INT reaches the foreground job, not the shell; the size is what the program sees
    shells.write(wid, one.sid, input="sleep 1000")
    assert one.read(wait_for_idle_ms=500)["state"] == "running"
    assert shells.signal(wid, one.sid, signal_name="INT")["signal"] == "INT"
    assert has_line(one.run("echo $?", "m3"), "130")
    assert shells.resize(wid, one.sid, cols=100, rows=40)["cols"] == 100
    assert has_line(one.run("stty size", "m4"), "40 100")

    # the guest's ring: a cursor it no longer holds resumes at the oldest character kept
    one.flood("seq 1 200000", "m5")
    old = shells.read(wid, one.sid, cursor=0, max_chars=50)
    assert old["truncated"] and old["cursor"] == one.cursor - so.RING_CHARS > 0

    # refusals: a cwd outside /workspace, an unknown shell
    for cwd in ("/etc", "../x"):
        with pytest.raises(InvalidArgumentError, match=r"outside /workspace|contains '\.\.'"):
            shells.open(wid, cwd=cwd)
    for unknown in ("0123456789ab", "nonsense"):
        with pytest.raises(NotFoundError, match=f"shell '{unknown}' does not exist in workspace"):
            shells.read(wid, unknown)

    # a second shell, in a subdirectory, whose program exits
    two = Session(shells, wid, cwd="sub", cols=80, rows=24)
    assert two.view["cwd"] == "/workspace/sub"
    assert has_line(two.run("pwd; stty size", "m6"), "24 80")
    shells.write(wid, two.sid, input="exit 7")
    wait_until(lambda: two.read()["state"] == "stopped", "the second shell to stop", WAIT)
    assert two.read()["exit_code"] == 7
    with pytest.raises(WrongStateError, match=r"has exited \(exit code 7\)"):
        shells.write(wid, two.sid, input="true")
    assert shells.close(wid, two.sid)["closed"] is True

    # close ends every process of the shell's session, and the shell is forgotten
    sid = int(
        re.findall(
            r"sid=(\d+)",
            one.run("echo sid=$$; sleep 1000 & nohup sleep 999 >/dev/null 2>&1 & true", "m7"),
        )[-1]
    )
    assert len(session_pids(pyro, wid, sid)) >= 3
    closed = shells.close(wid, one.sid)
    assert (closed["closed"], closed["state"]) == (True, "stopped")
    assert session_pids(pyro, wid, sid) == []
    with pytest.raises(NotFoundError, match="shells end when"):
        shells.read(wid, one.sid)


def test_shells_end_with_the_workspace_vm(vm_pyro: Pyro, leak_guard: LeakGuard) -> None:
    pyro = vm_pyro
    shells = pyro.manager.shells
    wid = pyro.create_workspace(environment=ENV)["workspace_id"]
    before_reset = Session(shells, wid).sid
    pyro.reset_workspace(wid)
    with pytest.raises(NotFoundError, match="when the workspace resets"):
        shells.read(wid, before_reset)
    before_stop = Session(shells, wid)
    pyro.stop_workspace(wid)
    with pytest.raises(WrongStateError, match="is stopped"):
        shells.read(wid, before_stop.sid)
    with pytest.raises(WrongStateError, match="is stopped"):
        shells.open(wid)
    pyro.start_workspace(wid)  # resumed: the shell goes on
    assert has_line(before_stop.run("echo resumed", "m7"), "resumed")
    pyro.reset_workspace(wid)
    with pytest.raises(NotFoundError, match=f"shell '{before_stop.sid}' does not exist") as caught:
        shells.read(wid, before_stop.sid)
    assert "shells end when they are closed and when the workspace resets" in str(caught.value)
    again = Session(shells, wid)
    assert has_line(again.run("echo again", "m8"), "again")
    listed = json.dumps(pyro.status_workspace(wid))  # nothing of shells is kept on the host
    assert before_stop.sid not in listed and again.sid not in listed
