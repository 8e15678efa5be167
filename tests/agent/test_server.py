"""The guest agent as a real process on a UNIX socket, spoken to frame by frame."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from framework.agent_harness import (
    WAIT,
    Raw,
    RunningAgent,
    live_group,
    short_workdir,
    start_agent,
    stop_agent,
    wait_until,
)
from pyro_mcp.agent import server as agent_module
from pyro_mcp.protocol import frames

PY311 = "/root/.pyenv/versions/3.11.7/bin/python3.11"


# --- harness (kept in step with the copy in test_client.py) --------------------------------


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_workdir("pyro-agent-") as path:
        yield path


@pytest.fixture
def running(workdir: Path) -> Iterator[RunningAgent]:
    agent = start_agent(workdir)
    yield agent
    stop_agent(agent)


@pytest.fixture
def raw(running: RunningAgent) -> Iterator[Raw]:
    conn = Raw(running.socket_path)
    conn.hello()
    yield conn
    conn.close()


# --- tests ---------------------------------------------------------------------------------

INTERPRETERS = [
    pytest.param(None, id="venv-python"),
    pytest.param(
        PY311,
        id="python3.11-script",
        marks=pytest.mark.skipif(not os.path.exists(PY311), reason=f"{PY311} is not installed"),
    ),
]


@pytest.mark.parametrize("python", INTERPRETERS)
def test_agent_serves_every_op(workdir: Path, python: str | None) -> None:
    running = start_agent(workdir, python)
    conn = Raw(running.socket_path)
    try:
        info = conn.hello()
        assert info["protocol"] == frames.PROTOCOL_VERSION
        assert info["agent_version"] == frames.AGENT_VERSION
        assert set(info["ops"]) == {
            *("hello", "ping", "exec", "configure", "sync", "shutdown"),
            *("file.list", "file.read", "file.write", "file.delete", "tree.manifest"),
            *("tar.create", "tar.extract", "patch.apply"),
            *("shell.open", "shell.read", "shell.write", "shell.signal", "shell.resize"),
            *("shell.close", "shell.list"),
            *("service.start", "service.list", "service.status", "service.logs"),
            *("service.stop", "service.wait", "secrets.put"),
        }
        pong = conn.call(2, "ping", {})["result"]
        assert pong["pong"] is True and isinstance(pong["time"], float)
        conn.request(3, "exec", {"argv": ["printf", "%s|", "a b", "it's"], "timeout": 10})
        output, answer = conn.until_result(3)
        assert output["stdout"] == b"a b|it's|"
        assert answer["result"]["exit_code"] == 0 and answer["result"]["stdout_bytes"] == 9
        seed = base64.b64encode(b"\x01" * 16).decode()
        configured = conn.call(4, "configure", {"machine_id": "0" * 32, "entropy": seed})
        assert configured["result"] == {"applied": ["machine_id", "entropy"], "warnings": []}
        assert (running.root / "dev/urandom").read_bytes() == b"\x01" * 16
        assert conn.call(5, "sync", {})["ok"]
        assert conn.call(6, "shutdown", {})["result"] == {"action": "poweroff"}
        # The power-off step runs after the answer, so the host hears of success first.
        wait_until(lambda: "not doing poweroff" in running.log.read_text(), "the power-off step")
    finally:
        conn.close()
        stop_agent(running)


def test_requests_before_hello_are_refused(running: RunningAgent) -> None:
    conn = Raw(running.socket_path)
    try:
        answer = conn.call(1, "ping", {})
        assert answer["error"]["code"] == frames.ERR_HANDSHAKE_REQUIRED
        conn.hello()
        assert conn.call(2, "ping", {})["ok"]
    finally:
        conn.close()


def test_version_mismatch_is_refused(running: RunningAgent) -> None:
    conn = Raw(running.socket_path)
    try:
        answer = conn.call(1, "hello", {"protocol": frames.PROTOCOL_VERSION + 1})
        assert answer["error"]["code"] == frames.ERR_VERSION_MISMATCH
        assert "speaks guest protocol" in answer["error"]["message"]
        assert conn.call(2, "ping", {})["error"]["code"] == frames.ERR_HANDSHAKE_REQUIRED
        assert conn.call(3, "hello", {"protocol": "1"})["error"]["code"] == "invalid_argument"
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("op", "params", "code"),
    [
        ("format_disk", {}, frames.ERR_UNKNOWN_OP),
        ("ping", {"extra": 1}, frames.ERR_INVALID_ARGUMENT),
        ("exec", {"argv": ["true"]}, frames.ERR_INVALID_ARGUMENT),
        ("exec", {"argv": "true", "timeout": 1}, frames.ERR_INVALID_ARGUMENT),
        ("exec", {"argv": ["true"], "timeout": 1, "cwd": "/no/such/dir"}, frames.ERR_NOT_FOUND),
        ("configure", {"machine_id": "xyz"}, frames.ERR_INVALID_ARGUMENT),
        ("shutdown", {"action": "explode"}, frames.ERR_INVALID_ARGUMENT),
    ],
)
def test_bad_requests_get_error_results(
    raw: Raw, op: str, params: dict[str, Any], code: str
) -> None:
    answer = raw.call(7, op, params)
    assert answer["ok"] is False and answer["error"]["code"] == code
    assert raw.call(8, "ping", {})["ok"]


def test_missing_cwd_is_named(raw: Raw) -> None:
    answer = raw.call(2, "exec", {"argv": ["true"], "timeout": 1, "cwd": "/no/such/dir"})
    assert "/no/such/dir does not exist" in answer["error"]["message"]


def test_bad_configure_changes_nothing(raw: Raw, running: RunningAgent) -> None:
    answer = raw.call(2, "configure", {"hostname": "fine", "machine_id": "bad"})
    assert answer["error"]["code"] == frames.ERR_INVALID_ARGUMENT
    assert not (running.root / "etc/hostname").exists()
    answer = raw.call(3, "configure", {"hostname": "fine", "time_ns": time.time_ns()})
    assert answer["result"]["applied"] == ["hostname", "time"]
    assert (running.root / "etc/hostname").read_text() == "fine\n"


def start_group(raw: Raw, rid: int) -> int:
    """Start a streaming exec that sleeps in two processes; return its process group."""
    script = "echo pg=$$; sleep 100 & sleep 100"
    raw.request(rid, "exec", {"command": script, "timeout": 300, "stream": True})
    frame = raw.recv()
    assert frame is not None and frame.type == "out", frame
    pgid = int(frame.body.decode().strip().removeprefix("pg="))
    wait_until(lambda: len(live_group(pgid)) >= 3, "the shell and both sleeps")
    return pgid


def test_cancel_kills_the_process_group(raw: Raw) -> None:
    pgid = start_group(raw, 2)
    raw.send(frames.cancel_header(2))
    _, answer = raw.until_result(2)
    result = answer["result"]
    assert result["cancelled"] is True and result["timed_out"] is False
    assert result["exit_code"] == 128 + 9
    assert not live_group(pgid)  # the answer comes only once the group is dead
    raw.send(frames.cancel_header(2))  # cancelling a finished request is harmless
    assert raw.call(3, "ping", {})["ok"]


def test_closing_the_connection_cancels_its_requests(running: RunningAgent) -> None:
    conn = Raw(running.socket_path)
    conn.hello()
    pgid = start_group(conn, 2)
    conn.close()
    wait_until(lambda: not live_group(pgid), "the abandoned group to die")


def test_request_ids_are_unique_while_running(raw: Raw) -> None:
    start_group(raw, 5)
    answer = raw.call(5, "ping", {})
    assert answer["error"]["code"] == frames.ERR_INVALID_ARGUMENT
    raw.send(frames.cancel_header(5))
    assert raw.until_result(5)[1]["result"]["cancelled"] is True


def test_input_frames_for_requests_without_input_are_dropped(raw: Raw) -> None:
    raw.request(2, "exec", {"command": "echo done", "timeout": 10})
    raw.send(frames.in_header(2), b"nobody reads this")
    raw.send(frames.in_header(2))
    raw.send(frames.in_header(99), b"no such request")
    output, answer = raw.until_result(2)
    assert output["stdout"] == b"done\n" and answer["result"]["exit_code"] == 0
    assert raw.call(3, "ping", {})["ok"]


def test_oversized_frame_drops_only_that_connection(running: RunningAgent) -> None:
    bad = Raw(running.socket_path)
    bad.hello()
    bad.sock.sendall((frames.MAX_HEADER_BYTES + 1).to_bytes(4, "big") + bytes(4))
    frame = bad.recv()
    assert frame is not None and frame.id == 0 and frame.header["ok"] is False
    assert frame.header["error"]["code"] == frames.ERR_PROTOCOL
    assert bad.recv() is None
    bad.close()
    good = Raw(running.socket_path)
    good.hello()
    assert good.call(2, "ping", {})["ok"]
    good.close()


def test_host_may_not_send_output_frames(running: RunningAgent) -> None:
    conn = Raw(running.socket_path)
    conn.hello()
    conn.send(frames.out_header(3, "stdout"), b"hi")
    frame = conn.recv()
    assert frame is not None and frame.id == 0
    assert conn.recv() is None
    conn.close()


def test_serve_connection_on_a_raw_file(tmp_path: Path) -> None:
    """The serial transport's path: an unbuffered file with readinto() and write()."""
    agent = agent_module.Agent(agent_module.AgentConfig.sandboxed(str(tmp_path)))
    host, guest = socket.socketpair()
    port = guest.makefile("rwb", buffering=0)
    served: list[agent_module.Session] = []
    thread = threading.Thread(target=lambda: served.append(agent.serve_connection(port)))
    thread.start()
    conn = Raw(host)
    conn.hello()
    conn.request(2, "exec", {"command": "echo serial", "timeout": 10})
    output, answer = conn.until_result(2)
    assert output["stdout"] == b"serial\n" and answer["result"]["exit_code"] == 0
    host.shutdown(socket.SHUT_WR)
    thread.join(WAIT)
    assert served[0].frames == 2 and not served[0].broken
    port.close()
    guest.close()
    host.close()


def test_kernel_transport(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 pyro.transport=serial quiet\n")
    assert agent_module.kernel_transport(str(cmdline)) == "serial"
    cmdline.write_text("console=ttyS0\n")
    assert agent_module.kernel_transport(str(cmdline)) == "vsock"
    assert agent_module.kernel_transport(str(tmp_path / "missing")) == "vsock"
