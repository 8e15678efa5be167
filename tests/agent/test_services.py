"""Services in the real agent process (Python 3.11, as shipped, when installed): readiness of
each kind, how a service ends and what it leaves (checked in /proc), logs, stop, names and
paths, and a restarted agent finding what its predecessor left.

Every wait here is for a state (a process gone, an answer arrived), never for a time.
"""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from framework.agent_harness import (
    Raw,
    RunningAgent,
    live_session,
    short_workdir,
    start_agent,
    stop_agent,
    wait_until,
)
from pyro_mcp.agent import service_logs
from pyro_mcp.protocol import frames

PY311 = "/root/.pyenv/versions/3.11.7/bin/python3.11"
GUEST_PYTHON = PY311 if os.path.exists(PY311) else None
PY = shlex.quote(sys.executable)  # what the services themselves run
NEVER = {"type": "file", "path": "never-there"}


class Agent:
    """A running agent and a connection to it, with numbered requests."""

    def __init__(self, running: RunningAgent) -> None:
        self.running = running
        self.conn = Raw(running.socket_path)
        self.conn.hello()
        self._ids = itertools.count(1)
        self._output: dict[int, dict[str, bytes]] = {}
        self._done: dict[int, dict[str, Any]] = {}
        self.workspace = running.root / "workspace"
        self.run_dir = running.root / "run" / "pyro-services"

    def send(self, op: str, params: dict[str, Any]) -> int:
        rid = next(self._ids)
        self.conn.request(rid, op, params)
        return rid

    def answer(self, rid: int) -> tuple[dict[str, bytes], dict[str, Any]]:
        """The output and result frame of request `rid`; other requests' frames are kept."""
        while rid not in self._done:
            frame = self.conn.recv()
            assert frame is not None, "the agent closed the connection"
            output = self._output.setdefault(frame.id, {"stdout": b"", "stderr": b""})
            if frame.type == "out":
                output[frame.header["stream"]] += frame.body
            elif frame.type == "res":
                self._done[frame.id] = frame.header
        return self._output.pop(rid, {"stdout": b"", "stderr": b""}), self._done.pop(rid)

    def call(self, op: str, **params: Any) -> dict[str, Any]:
        header = self.answer(self.send(op, params))[1]
        assert header["ok"], header
        result: dict[str, Any] = header["result"]
        return result

    def refused(self, op: str, **params: Any) -> tuple[str, str]:
        header = self.answer(self.send(op, params))[1]
        assert not header["ok"], header
        return header["error"]["code"], header["error"]["message"]

    def logs(self, name: str, **params: Any) -> tuple[dict[str, bytes], dict[str, Any]]:
        output, header = self.answer(self.send("service.logs", {"name": name, **params}))
        assert header["ok"], header
        return output, header["result"]

    def stop_all(self) -> None:
        for record in self.call("service.list")["services"]:
            if record["state"] == "running":
                self.call("service.stop", name=record["name"], grace_seconds=0)


@pytest.fixture
def agent() -> Iterator[Agent]:
    with short_workdir("pyro-svc-") as workdir:
        running = start_agent(Path(workdir), GUEST_PYTHON)
        client = Agent(running)
        yield client
        client.stop_all()
        client.conn.close()
        stop_agent(running, forbid_traceback=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gone(pid: int) -> bool:
    """Nothing of session `pid` runs any more."""
    return not live_session(pid)


# --- readiness ------------------------------------------------------------------------------

TOUCH_THEN_SLEEP = "sleep 0.2; touch ready; exec sleep 100"


def http_server(port: int) -> str:
    return f"mkdir -p sub && exec {PY} -m http.server {port} --bind 127.0.0.1"


def readiness_case(kind: str, port: int) -> tuple[str, dict[str, str]]:
    if kind == "file":
        return TOUCH_THEN_SLEEP, {"type": "file", "path": "ready"}
    if kind == "command":
        return TOUCH_THEN_SLEEP, {"type": "command", "command": "test -f ready"}
    if kind == "tcp":
        return http_server(port), {"type": "tcp", "address": f"127.0.0.1:{port}"}
    # /sub answers 301 (to /sub/): a 3xx counts, and it is not followed
    return http_server(port), {"type": "http", "url": f"http://127.0.0.1:{port}/sub"}


@pytest.mark.parametrize("kind", ["file", "tcp", "http", "command"])
def test_each_readiness_check_makes_the_service_running_once_it_passes(
    agent: Agent, kind: str
) -> None:
    command, readiness = readiness_case(kind, free_port())
    record = agent.call(
        "service.start", name=f"svc-{kind}", command=command, readiness=readiness,
        ready_timeout=60, ready_interval_ms=50,
    )  # fmt: skip
    assert record["state"] == "running" and record["stop_reason"] is None
    assert record["ready_at"] is not None and record["ready_at"] >= record["started_at"]
    shown = {**readiness, "path": "/workspace/ready"} if kind == "file" else readiness
    assert record["readiness"] == shown and record["cwd"] == "/workspace"
    assert record["pid"] > 0 and not gone(record["pid"])
    stopped = agent.call("service.stop", name=f"svc-{kind}")
    assert (stopped["state"], stopped["stop_reason"]) == ("stopped", "sigterm")
    assert gone(record["pid"])


def test_an_http_check_wants_a_2xx_or_3xx_answer(agent: Agent) -> None:
    port = free_port()
    record = agent.call(
        "service.start", name="web", command=http_server(port), ready_timeout=2,
        readiness={"type": "http", "url": f"http://127.0.0.1:{port}/missing"},
        ready_interval_ms=50,
    )  # fmt: skip
    assert (record["state"], record["stop_reason"]) == ("failed", "readiness_timeout")
    assert record["ready_at"] is None and gone(record["pid"])


def test_a_service_that_exits_before_it_is_ready_fails_with_its_exit_code(agent: Agent) -> None:
    record = agent.call("service.start", name="early", command="echo bye >&2; exit 3",
                        readiness=NEVER, ready_timeout=60)  # fmt: skip
    assert (record["state"], record["stop_reason"]) == ("failed", "process_exited_before_ready")
    assert record["exit_code"] == 3 and record["ended_at"] >= record["started_at"]
    output, _ = agent.logs("early")
    assert output["stderr"] == b"bye\n"


def test_a_missing_program_fails_as_a_shell_would(agent: Agent) -> None:
    record = agent.call("service.start", name="nope", argv=["/no/such/program"])
    assert (record["state"], record["exit_code"]) == ("failed", frames.EXIT_NOT_FOUND)
    assert b"command not found" in agent.logs("nope")[0]["stderr"]


# Moves itself to a process group of its own, still in the service's session (out of reach of
# a group kill), says so, and sleeps; the shell keeps a background job too.
ESCAPE = "import os, time; os.setpgid(0, 0); open('moved', 'w').close(); time.sleep(100)"
SPREAD = (
    f"sleep 100 & {PY} -c {shlex.quote(ESCAPE)} & while [ ! -f moved ]; do sleep 0.01; done; wait"
)


def test_a_readiness_timeout_kills_the_whole_session(agent: Agent) -> None:
    record = agent.call("service.start", name="slow", command=SPREAD, readiness=NEVER,
                        ready_timeout=1.5, ready_interval_ms=50)  # fmt: skip
    assert (record["state"], record["stop_reason"]) == ("failed", "readiness_timeout")
    assert record["exit_code"] == 128 + signal.SIGKILL
    assert (agent.workspace / "moved").exists()  # the escapee had left the group in time
    assert gone(record["pid"])  # checked as the answer arrives: nothing is left to die later


def test_an_exit_is_recorded_by_the_agent_itself_and_a_wait_sees_it(agent: Agent) -> None:
    record = agent.call(
        "service.start", name="job", command="while [ ! -f go ]; do sleep 0.05; done; exit 7"
    )
    assert record["state"] == "running" and record["ready_at"] == pytest.approx(
        record["started_at"], abs=5
    )  # no readiness check: ready at once
    (agent.workspace / "go").touch()
    # Reaped without any request: its pid leaves /proc only once the agent has waited for it.
    wait_until(lambda: not Path(f"/proc/{record['pid']}").exists(), "the agent to reap it")
    status = agent.call("service.status", name="job")
    assert (status["state"], status["exit_code"], status["stop_reason"]) == ("exited", 7, None)
    assert status["ended_at"] >= status["started_at"]
    # A wait (the supervisor's, for published ports) answers when the run ends.
    record = agent.call("service.start", name="job", command="exec sleep 100")
    waiter = agent.send("service.wait", {"name": "job", "run_id": record["run_id"]})
    agent.call("service.stop", name="job")
    done = agent.answer(waiter)[1]["result"]
    assert done["ended"] is True and done["service"]["state"] == "stopped"


def test_a_wait_for_an_ended_or_unknown_run_answers_at_once(agent: Agent) -> None:
    record = agent.call("service.start", name="quick", command="exit 0")
    wait_until(lambda: agent.call("service.status", name="quick")["state"] == "exited", "exit")
    done = agent.call("service.wait", name="quick", run_id=record["run_id"])
    assert done["ended"] and done["service"]["exit_code"] == 0
    assert agent.call("service.wait", name="other", run_id="0" * 16) == {
        "ended": True,
        "service": None,
    }


# --- logs -----------------------------------------------------------------------------------

CHATTY = (
    "i=1; while [ $i -le 300 ]; do echo line$i; i=$((i+1)); done; "
    "echo oops >&2; touch ready; exec sleep 100"
)


def test_logs_show_the_tail_or_everything_per_stream_within_a_byte_cap(agent: Agent) -> None:
    agent.call("service.start", name="chatty", command=CHATTY,
               readiness={"type": "file", "path": "ready"})  # fmt: skip
    output, result = agent.logs("chatty")  # 200 lines by default
    lines = output["stdout"].decode().splitlines()
    assert lines == [f"line{i}" for i in range(101, 301)] and output["stderr"] == b"oops\n"
    assert result["truncated"] is False and result["stdout_bytes"] == len(output["stdout"])
    assert result["service"]["name"] == "chatty"
    everything, result = agent.logs("chatty", tail_lines=None)
    assert everything["stdout"].decode().splitlines() == [f"line{i}" for i in range(1, 301)]
    assert result["truncated"] is False
    capped, result = agent.logs("chatty", tail_lines=5, max_bytes=10)
    assert capped["stdout"] == output["stdout"][-10:]
    assert result["stdout_truncated"] is True and result["truncated"] is True
    assert result["stderr_truncated"] is False and capped["stderr"] == b"oops\n"


FLOOD = (
    f"{PY} -c \"import sys; [sys.stdout.write('x' * 1023 + chr(10)) for _ in range(6000)]\"; "
    "echo last; touch ready; exec sleep 100"
)


def test_log_files_rotate_at_their_cap_so_a_chatty_service_keeps_bounded_disk(
    agent: Agent,
) -> None:
    agent.call("service.start", name="flood", command=FLOOD,
               readiness={"type": "file", "path": "ready"}, ready_timeout=120)  # fmt: skip
    files = sorted(p.name for p in (agent.run_dir / "flood").iterdir())
    assert files == ["leader", "stderr.log", "stdout.log", "stdout.log.1"]
    for name in ("stdout.log", "stdout.log.1"):
        assert (agent.run_dir / "flood" / name).stat().st_size <= service_logs.LOG_FILE_BYTES
    output, result = agent.logs("flood", tail_lines=None, max_bytes=4 * 1024 * 1024)
    assert output["stdout"].endswith(b"x\nlast\n")
    assert result["stdout_truncated"] is True  # the oldest output was rotated away
    output, result = agent.logs("flood", tail_lines=2)
    assert output["stdout"] == b"x" * 1023 + b"\nlast\n" and result["truncated"] is False


@pytest.mark.parametrize(
    ("data", "whole", "lost", "lines", "limit", "expected"),
    [
        (b"a\nb\nc\n", True, False, 2, 100, (b"b\nc\n", False)),
        (b"a\nb\nc", True, False, 2, 100, (b"b\nc", False)),
        (b"a\nb\n", True, False, 5, 100, (b"a\nb\n", False)),
        (b"a\nb\n", True, True, 5, 100, (b"a\nb\n", True)),  # older lines were rotated away
        (b"xx\nb\n", False, False, 5, 4, (b"x\nb\n", True)),  # the read stopped short of them
        (b"a\nb\n", True, False, None, 3, (b"\nb\n", True)),
        (b"a\nb\n", True, False, 0, 100, (b"", False)),
    ],
)
def test_the_tail_of_a_log(
    data: bytes,
    whole: bool,
    lost: bool,
    lines: int | None,
    limit: int,
    expected: tuple[bytes, bool],
) -> None:
    assert service_logs.cut_tail(data, whole, lost, lines, limit) == expected


# --- stop -----------------------------------------------------------------------------------

STUBBORN = "trap '' TERM; touch ready; while :; do sleep 1; done"  # children ignore TERM too


def test_stop_sends_term_then_kill_to_a_service_that_ignores_term(agent: Agent) -> None:
    record = agent.call("service.start", name="stubborn", command=STUBBORN,
                        readiness={"type": "file", "path": "ready"})  # fmt: skip
    stopped = agent.call("service.stop", name="stubborn", grace_seconds=0.5)
    assert (stopped["state"], stopped["stop_reason"]) == ("stopped", "sigkill")
    assert stopped["exit_code"] == 128 + signal.SIGKILL
    assert gone(record["pid"])
    again = agent.call("service.stop", name="stubborn")  # stopping an ended service: as it is
    assert again == stopped


def test_a_stop_during_the_readiness_wait_answers_both_requests(agent: Agent) -> None:
    start = agent.send("service.start", {"name": "waiting", "command": "exec sleep 100",
                                         "readiness": NEVER, "ready_timeout": 600})  # fmt: skip
    wait_until(lambda: (agent.run_dir / "waiting" / "leader").exists(), "the service to start")
    stopped = agent.call("service.stop", name="waiting")
    started = agent.answer(start)[1]["result"]
    assert started["state"] == stopped["state"] == "stopped"
    assert started["stop_reason"] == "sigterm"


def test_a_cancelled_start_kills_the_service(agent: Agent) -> None:
    rid = agent.send("service.start", {"name": "abandoned", "command": "exec sleep 100",
                                       "readiness": NEVER, "ready_timeout": 600})  # fmt: skip
    leader = agent.run_dir / "abandoned" / "leader"
    wait_until(leader.exists, "the service to start")
    wait_until(lambda: leader.read_text().strip() != "", "its pid")
    pid = int(leader.read_text())
    agent.conn.send(frames.cancel_header(rid))
    record = agent.answer(rid)[1]["result"]
    assert (record["state"], record["stop_reason"]) == ("failed", "start_cancelled")
    assert gone(pid)


# --- names, paths, conflicts -------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"name": "../x", "command": "true"},
        {"name": "-a", "command": "true"},
        {"name": "a" * 65, "command": "true"},
        {"name": "a b", "command": "true"},
        {"name": "a\n", "command": "true"},
        {"name": "ok", "command": "true", "cwd": "/etc"},
        {"name": "ok", "command": "true", "cwd": "../x"},
        {"name": "ok", "command": "true", "readiness": {"type": "file", "path": "/etc/passwd"}},
        {"name": "ok", "command": "true", "readiness": {"type": "file", "path": "a/../../x"}},
        {"name": "ok", "command": "true", "readiness": {"type": "file", "path": "a", "url": "b"}},
        {"name": "ok", "command": "true", "readiness": {"type": "socket", "path": "a"}},
        {"name": "ok", "command": "true", "readiness": {"type": "tcp", "address": "nope"}},
        {"name": "ok", "command": "true", "readiness": {"type": "http", "url": "ftp://x"}},
        {"name": "ok", "command": "true", "argv": ["true"]},
        {"name": "ok", "command": "true", "ready_timeout": 0},
        {"name": "ok", "command": "true", "ready_interval_ms": 0},
        {"name": "ok", "command": "true", "colour": "red"},
    ],
)
def test_bad_start_requests_are_refused_before_anything_runs(
    agent: Agent, params: dict[str, Any]
) -> None:
    code, _ = agent.refused("service.start", **params)
    assert code == frames.ERR_INVALID_ARGUMENT
    assert agent.call("service.list")["services"] == []


def test_a_symlinked_cwd_leading_out_is_refused_and_a_missing_one_not_found(
    agent: Agent,
) -> None:
    (agent.workspace / "out").symlink_to("/etc")
    code, message = agent.refused("service.start", name="x", command="true", cwd="out")
    assert code == frames.ERR_INVALID_ARGUMENT and "outside" in message
    code, message = agent.refused("service.start", name="x", command="true", cwd="nowhere")
    assert code == frames.ERR_NOT_FOUND and "/workspace/nowhere" in message


def test_a_running_name_is_refused_and_an_ended_one_starts_afresh(agent: Agent) -> None:
    first = agent.call("service.start", name="app", command="echo one; exec sleep 100")
    code, message = agent.refused("service.start", name="app", command="true")
    assert code == "conflict" and "already running" in message
    agent.call("service.stop", name="app")
    second = agent.call("service.start", name="app", command="echo two; exec sleep 100")
    assert second["run_id"] != first["run_id"] and second["state"] == "running"
    wait_until(lambda: agent.logs("app")[0]["stdout"] == b"two\n", "the new run's output")
    assert [r["run_id"] for r in agent.call("service.list")["services"]] == [second["run_id"]]


def test_an_unknown_service_is_not_found(agent: Agent) -> None:
    for op in ("service.status", "service.logs", "service.stop"):
        code, message = agent.refused(op, name="ghost")
        assert code == frames.ERR_NOT_FOUND and "ghost" in message


# --- a restarted agent ----------------------------------------------------------------------


def test_a_restarted_agent_kills_what_its_predecessor_left(agent: Agent) -> None:
    record = agent.call("service.start", name="orphan", command="exec sleep 100")
    root, socket_path = agent.running.root, agent.running.socket_path + "2"
    # A second agent on the same root, as init respawns it after a crash: its first act
    # is to end services nobody knows any more.
    with open(agent.running.log, "ab") as log:
        second = subprocess.Popen(
            [sys.executable, "-m", "pyro_mcp.agent", "--unix", socket_path,
             "--sandbox-root", str(root)],
            stdin=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        wait_until(lambda: gone(record["pid"]), "the old service to be killed")
        wait_until(lambda: not (agent.run_dir / "orphan").exists(), "its directory to go")
    finally:
        second.terminate()
        second.wait(15)
    # The first agent saw its service die: recorded, as for any other exit.
    wait_until(lambda: agent.call("service.status", name="orphan")["state"] == "exited", "it")
