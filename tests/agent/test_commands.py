"""exec in the real agent process: a timeout or cancel is answered only once the command's whole
session is dead, checked in /proc at the moment the answer arrives.

A zombie counts as gone: it has exited and holds nothing; only its parent (PID 1, for an
orphan) can remove it, which no answer of the agent could wait for. The command's leader,
the agent's own child, must be reaped before the answer.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from framework.agent_harness import (
    Raw,
    RunningAgent,
    live_session,
    session_members,
    short_workdir,
    start_agent,
    stop_agent,
    wait_until,
)
from pyro_mcp.protocol import frames

# Moves itself to a process group of its own (still in the session, out of the group a
# group kill reaches), says so, and sleeps.
ESCAPE = (
    "import os, time; os.setpgid(0, 0); print('escaped', os.getpgid(0), flush=True); "
    "time.sleep(100)"
)
ESCAPEE = f"{shlex.quote(sys.executable)} -c {shlex.quote(ESCAPE)}"
SCRIPTS = {
    "background-sleep": "echo pg=$$; sleep 100 & sleep 100",
    "nested-shells": "echo pg=$$; sh -c 'sleep 100 & sleep 100' & sh -c 'sleep 100' & sleep 100",
    # The reader passes the line on only once the escapee has moved, then sleeps.
    "escaped-group": f'echo pg=$$; {ESCAPEE} | {{ read -r line; echo "$line"; sleep 100; }}',
}


@pytest.fixture
def agent() -> Iterator[tuple[RunningAgent, Raw]]:
    with short_workdir("pyro-exec-") as workdir:
        running = start_agent(Path(workdir))
        conn = Raw(running.socket_path)
        conn.hello()
        yield running, conn
        conn.close()
        stop_agent(running)


def session_of(output: dict[str, bytes]) -> int:
    return int(output["stdout"].split(b"pg=")[1].split(b"\n")[0])


def assert_session_gone(running: RunningAgent, sid: int) -> None:
    """Nothing of the session runs; nothing of it is the agent's unreaped child."""
    members = session_members(sid)
    assert not live_session(sid), members
    assert all(proc.ppid != running.proc.pid for proc in members.values()), members


def check_escaped(stdout: bytes, sid: int, script: str) -> None:
    """The escapee had left the command's group before the kill (else the case proves less)."""
    if script == "escaped-group":
        assert b"escaped " in stdout, f"the escapee had not moved before the kill: {stdout!r}"
        assert int(stdout.split(b"escaped ")[1].split(b"\n")[0]) != sid


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_timeout_is_answered_once_the_whole_session_is_dead(
    agent: tuple[RunningAgent, Raw], script: str
) -> None:
    running, conn = agent
    conn.request(2, "exec", {"command": SCRIPTS[script], "timeout": 3})
    output, answer = conn.until_result(2)
    sid = session_of(output)
    assert_session_gone(running, sid)
    result = answer["result"]
    assert (result["exit_code"], result["timed_out"]) == (frames.EXIT_TIMEOUT, True)
    check_escaped(output["stdout"], sid, script)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_cancel_is_answered_once_the_whole_session_is_dead(
    agent: tuple[RunningAgent, Raw], script: str
) -> None:
    running, conn = agent
    params: dict[str, Any] = {"command": SCRIPTS[script], "timeout": 300, "stream": True}
    conn.request(2, "exec", params)
    stdout = b""

    def started() -> bool:
        nonlocal stdout
        frame = conn.recv()
        assert frame is not None and frame.type == "out", frame
        stdout += frame.body
        return script != "escaped-group" or b"escaped" in stdout

    wait_until(started, "the command to start")
    sid = session_of({"stdout": stdout})
    wait_until(lambda: len(live_session(sid)) >= 3, "the command's processes")
    conn.send(frames.cancel_header(2))
    output, answer = conn.until_result(2)
    assert_session_gone(running, sid)
    assert answer["result"]["cancelled"] is True
    check_escaped(stdout + output["stdout"], sid, script)
