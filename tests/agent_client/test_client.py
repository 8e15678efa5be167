"""GuestClient against a real agent process, and against a scripted hostile guest."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from framework.agent_harness import (
    WAIT,
    live_group,
    short_workdir,
    start_agent,
    stop_agent,
    wait_until,
)
from framework.agent_harness import RunningAgent as Agent
from framework.scripted_guest import ScriptedGuest
from pyro_mcp.agent_client.client import ExecResult, GuestClient
from pyro_mcp.errors import GuestError, InvalidArgumentError, NotFoundError, PyroTimeoutError
from pyro_mcp.protocol import frames, ops
from pyro_mcp.protocol.frames import Frame


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_workdir("pyro-client-") as path:
        yield path


@pytest.fixture
def agent(workdir: Path) -> Iterator[Agent]:
    running = start_agent(workdir)
    yield running
    stop_agent(running)


@pytest.fixture
def client(agent: Agent) -> Iterator[GuestClient]:
    with GuestClient.connect_unix(agent.socket_path, timeout=WAIT) as connected:
        yield connected


# --- against the real agent ----------------------------------------------------------------


def test_connect_performs_the_handshake(client: GuestClient) -> None:
    assert client.agent_info is not None
    assert client.agent_info.protocol == frames.PROTOCOL_VERSION
    assert "exec" in client.agent_info.ops
    assert isinstance(client.ping(), float)


def test_argv_reaches_the_child_exactly(client: GuestClient) -> None:
    args = ["a b", "it's", 'say "hi"', "", "$HOME", "*", "back\\slash"]
    result = client.exec(["printf", "[%s]\\n", *args], timeout=10)
    assert result.stdout == "".join(f"[{arg}]\n" for arg in args)
    assert result.exit_code == 0 and result.stderr == ""


def test_command_string_with_env_and_cwd(client: GuestClient, workdir: Path) -> None:
    result = client.exec(
        command='echo "$FOO"; pwd; echo oops >&2', env={"FOO": "x  y"}, cwd=str(workdir), timeout=10
    )
    assert result.stdout == f"x  y\n{workdir}\n"
    assert result.stderr == "oops\n"


def test_default_environment(client: GuestClient) -> None:
    result = client.exec(["env"], timeout=10)
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert env == ops.DEFAULT_EXEC_ENV


def test_missing_cwd_is_not_found(client: GuestClient) -> None:
    with pytest.raises(NotFoundError, match="/no/such/dir"):
        client.exec(["true"], cwd="/no/such/dir", timeout=10)


@pytest.mark.parametrize(
    ("command", "code"),
    [("exit 3", 3), ("kill -TERM $$", 128 + 15), ("kill -KILL $$", 128 + 9), ("true", 0)],
)
def test_exit_codes(client: GuestClient, command: str, code: int) -> None:
    assert client.exec(command=command, timeout=10).exit_code == code


def test_missing_and_unrunnable_programs(client: GuestClient, workdir: Path) -> None:
    missing = client.exec(["no-such-program-pyro"], timeout=10)
    assert missing.exit_code == 127
    assert "no-such-program-pyro: command not found" in missing.stderr
    script = workdir / "not-executable"
    script.write_text("#!/bin/sh\n")
    unrunnable = client.exec([str(script)], timeout=10)
    assert unrunnable.exit_code == 126 and "ermission denied" in unrunnable.stderr


def test_timeout_kills_the_group_and_keeps_output(client: GuestClient) -> None:
    result = client.exec(command="echo start; echo pg=$$; sleep 100 & sleep 100", timeout=1)
    assert result.exit_code == 124 and result.timed_out and not result.cancelled
    assert result.stdout.startswith("start\npg=")
    pgid = int(result.stdout.split("pg=")[1])
    assert not live_group(pgid)  # the answer comes only once the group is dead


def test_huge_output_is_capped_while_the_child_runs_on(client: GuestClient) -> None:
    command = "head -c 5242880 /dev/zero | tr '\\0' a; echo finished >&2"
    result = client.exec(command=command, timeout=60)
    assert result.exit_code == 0 and not result.timed_out
    assert result.stdout == "a" * ops.DEFAULT_MAX_OUTPUT and result.stdout_truncated
    assert result.stderr == "finished\n" and not result.stderr_truncated


def test_streamed_output_is_capped_too(client: GuestClient) -> None:
    chunks: list[tuple[str, bytes]] = []
    result = client.exec(
        command="seq 100000", timeout=60, max_output=1000, on_output=lambda *c: chunks.append(c)
    )
    assert b"".join(data for _, data in chunks) == result.stdout.encode()
    assert len(result.stdout) == 1000 and result.stdout_truncated and result.exit_code == 0


def test_streaming_delivers_output_while_the_command_runs(
    client: GuestClient, workdir: Path
) -> None:
    flag = workdir / "flag"
    chunks: list[tuple[str, bytes]] = []

    def on_output(stream: str, data: bytes) -> None:
        chunks.append((stream, data))
        if b"ready" in data:
            flag.touch()  # the command only finishes once it sees this

    script = 'echo ready; while [ ! -e "$FLAG" ]; do sleep 0.01; done; echo after >&2'
    result = client.exec(command=script, env={"FLAG": str(flag)}, timeout=30, on_output=on_output)
    assert result.exit_code == 0 and not result.timed_out
    assert chunks == [("stdout", b"ready\n"), ("stderr", b"after\n")]
    assert (result.stdout, result.stderr) == ("ready\n", "after\n")


def test_concurrent_execs_share_one_connection(client: GuestClient, workdir: Path) -> None:
    count = 20
    barrier = workdir / "barrier"
    barrier.mkdir()
    # Each command waits until all have started: this only ends if they run at once.
    script = (
        'touch "$DIR/$N"; while [ "$(ls "$DIR" | wc -l)" -lt {} ]; do sleep 0.01; done; echo $N'
    )
    results: dict[int, ExecResult] = {}

    def run(n: int) -> None:
        env = {"DIR": str(barrier), "N": str(n)}
        results[n] = client.exec(command=script.format(count), env=env, timeout=60)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {n: (r.stdout, r.exit_code) for n, r in results.items()} == {
        n: (f"{n}\n", 0) for n in range(count)
    }


def test_host_timeout_cancels_the_request(client: GuestClient) -> None:
    chunks: list[bytes] = []
    params = {"command": "echo pg=$$; sleep 100 & sleep 100", "timeout": 300, "stream": True}
    with pytest.raises(PyroTimeoutError, match="did not answer exec"):
        client.request("exec", params, timeout=1.0, on_output=lambda _, data: chunks.append(data))
    pgid = int(b"".join(chunks).decode().split("pg=")[1])
    wait_until(lambda: not live_group(pgid), "the cancelled group to die")
    assert isinstance(client.ping(), float)


def test_failing_output_callback_cancels_the_command(client: GuestClient) -> None:
    seen: list[bytes] = []

    def on_output(stream: str, data: bytes) -> None:
        seen.append(data)
        raise RuntimeError("consumer broke")

    with pytest.raises(RuntimeError, match="consumer broke"):
        client.exec(command="echo pg=$$; sleep 100", timeout=300, on_output=on_output)
    pgid = int(seen[0].decode().split("pg=")[1])
    wait_until(lambda: not live_group(pgid), "the abandoned group to die")
    assert client.exec(["true"], timeout=10).exit_code == 0


def test_configure_writes_identity(client: GuestClient, agent: Agent) -> None:
    applied = client.configure(
        hostname="vm-7", machine_id="f" * 32, time_ns=time.time_ns(), entropy=b"\x00\x01" * 8
    )
    assert applied == ["hostname", "machine_id", "time", "entropy"]
    assert (agent.root / "etc/hostname").read_text() == "vm-7\n"
    assert (agent.root / "etc/machine-id").read_text() == "f" * 32 + "\n"
    assert (agent.root / "dev/urandom").read_bytes() == b"\x00\x01" * 8


def test_bad_arguments_fail_before_a_round_trip(client: GuestClient) -> None:
    with pytest.raises(InvalidArgumentError, match="machine_id"):
        client.configure(machine_id="nope")
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        client.exec(timeout=1)
    with pytest.raises(InvalidArgumentError, match="timeout"):
        client.exec(["true"], timeout=0)
    with pytest.raises(InvalidArgumentError, match="cwd"):
        client.exec(["true"], cwd="relative", timeout=1)


def test_agent_errors_map_to_the_error_tree(client: GuestClient) -> None:
    with pytest.raises(GuestError, match="unknown operation"):
        client.request("format_disk", {}, timeout=WAIT)
    with pytest.raises(InvalidArgumentError, match="unknown parameter"):
        client.request("ping", {"x": 1}, timeout=WAIT)
    client.sync()
    client.shutdown()
    assert not client.closed


def test_agent_exit_fails_pending_requests(workdir: Path) -> None:
    running = start_agent(workdir)
    client = GuestClient.connect_unix(running.socket_path, timeout=WAIT)
    failures: list[BaseException] = []
    pids: list[bytes] = []

    def run() -> None:
        try:
            client.exec(
                command="echo pg=$$; sleep 100", timeout=300, on_output=lambda _, d: pids.append(d)
            )
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: bool(pids), "the command to start")
    running.proc.send_signal(signal.SIGTERM)
    thread.join(WAIT)
    assert running.proc.wait(WAIT) == 0
    assert isinstance(failures[0], GuestError) and "connection closed" in str(failures[0])
    assert "stopped" in str(failures[0])
    assert client.closed
    with pytest.raises(GuestError):
        client.ping()
    client.close()
    pgid = int(pids[0].decode().split("pg=")[1])
    wait_until(lambda: not live_group(pgid), "the agent's commands to die with it")


def test_connect_gives_up_at_the_deadline(workdir: Path) -> None:
    with pytest.raises(PyroTimeoutError, match="could not reach"):
        GuestClient.connect_unix(str(workdir / "absent.sock"), timeout=0.3)


def test_firecracker_vsock_bridge(agent: Agent, workdir: Path) -> None:
    """A stand-in for Firecracker's UDS: silent at first (no guest driver), then OK + relay."""
    uds = workdir / "v.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(uds))
    listener.listen()
    lines: list[bytes] = []
    sockets: list[socket.socket] = [listener]
    relays: list[threading.Thread] = []

    def bridge() -> None:
        for attempt in range(2):
            conn, _ = listener.accept()
            sockets.append(conn)
            lines.append(conn.recv(64))
            if attempt == 0:
                continue  # say nothing, like a guest without a vsock driver yet
            conn.sendall(b"OK 1073741824\n")
            upstream = socket.socket(socket.AF_UNIX)
            sockets.append(upstream)
            upstream.connect(agent.socket_path)
            for src, dst in ((conn, upstream), (upstream, conn)):
                relays.append(threading.Thread(target=relay, args=(src, dst)))
                relays[-1].start()

    accepter = threading.Thread(target=bridge)
    accepter.start()
    with GuestClient.connect_firecracker_vsock(str(uds), timeout=WAIT) as client:
        assert client.exec(["echo", "via vsock"], timeout=10).stdout == "via vsock\n"
    accepter.join(WAIT)
    for thread in relays:
        thread.join(WAIT)
    assert lines == [b"CONNECT 52\n", b"CONNECT 52\n"]
    for sock in sockets:
        sock.close()


def relay(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)


# --- against a scripted, hostile guest ------------------------------------------------------

GOOD_EXEC: dict[str, Any] = {
    "exit_code": 0,
    "stdout_bytes": 0,
    "stderr_bytes": 0,
    "stdout_truncated": False,
    "stderr_truncated": False,
    "duration_ms": 1,
    "timed_out": False,
    "cancelled": False,
}


def answer_exec(
    result: dict[str, Any], output: list[tuple[str, bytes]] | None = None
) -> Callable[[ScriptedGuest], None]:
    def script(guest: ScriptedGuest) -> None:
        request = guest.next_request()
        guest.send(frames.out_header(999, "stdout"), b"late output of another request")
        for stream, data in output or []:
            guest.send(frames.out_header(request.id, stream), data)
        guest.send(frames.ok_header(request.id, result))

    return script


def test_scripted_guest_well_formed_answer() -> None:
    output = [("stdout", b"\xffok"), ("stderr", b"e")]
    result = {**GOOD_EXEC, "stdout_bytes": 3, "stderr_bytes": 1}
    with GuestClient(ScriptedGuest(answer_exec(result, output)).host) as client:
        got = client.exec(["x"], timeout=5)
        assert (got.stdout, got.stderr) == ("\ufffdok", "e")


@pytest.mark.parametrize(
    ("result", "output", "message"),
    [
        ({**GOOD_EXEC, "exit_code": "0"}, [], "exit_code"),
        ({**GOOD_EXEC, "exit_code": True}, [], "exit_code"),
        ({**GOOD_EXEC, "exit_code": 999}, [], "out of range"),
        ({**GOOD_EXEC, "timed_out": 1}, [], "timed_out"),
        ({**GOOD_EXEC, "stdout_bytes": 5}, [], "disagrees"),
        (GOOD_EXEC, [("stdout", b"x" * 11)], "more than 10 bytes"),
        ({"exit_code": 0}, [], "malformed result"),
    ],
)
def test_malformed_results_close_the_connection(
    result: dict[str, Any], output: list[tuple[str, bytes]], message: str
) -> None:
    client = GuestClient(ScriptedGuest(answer_exec(result, output)).host)
    with pytest.raises(GuestError, match=message):
        client.exec(["x"], timeout=5, max_output=10)
    assert client.closed
    with pytest.raises(GuestError):
        client.ping()
    client.close()


def raw_bytes(data: bytes) -> Callable[[ScriptedGuest], None]:
    def script(guest: ScriptedGuest) -> None:
        guest.next_request()
        guest.sock.sendall(data)

    return script


def reply(make: Callable[[Frame], dict[str, Any]]) -> Callable[[ScriptedGuest], None]:
    def script(guest: ScriptedGuest) -> None:
        guest.send(make(guest.next_request()))

    return script


def hang_up(guest: ScriptedGuest) -> None:
    guest.next_request()
    guest.sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (raw_bytes(b"\xff" * 8), "malformed frame"),
        (raw_bytes(b"\x00\x00\x00\x02\x00\x00\x00\x00{}"), "malformed frame"),
        (reply(lambda req: frames.req_header(1, "exec", {})), "may not send req"),
        (reply(lambda req: frames.cancel_header(req.id)), "may not send cancel"),
        (reply(lambda req: frames.error_header(0, "protocol_error", "bye\x1b[2J")), "bye\\?"),
        (hang_up, "connection closed"),
    ],
)
def test_hostile_frames_fail_the_connection(
    script: Callable[[ScriptedGuest], None], message: str
) -> None:
    client = GuestClient(ScriptedGuest(script).host)
    with pytest.raises(GuestError, match=message):
        client.ping(timeout=5)
    assert client.closed
    client.close()


def test_hello_with_another_protocol_is_refused() -> None:
    answer = {"protocol": frames.PROTOCOL_VERSION + 1, "agent_version": "9", "ops": []}
    guest = ScriptedGuest(reply(lambda req: frames.ok_header(req.id, answer)))
    with GuestClient(guest.host) as client, pytest.raises(GuestError, match="speaks protocol"):
        client.hello(timeout=5)


def test_guest_error_text_is_sanitised() -> None:
    noisy = "bad\x1b]0;pwned\x07" + "x" * 2000
    guest = ScriptedGuest(reply(lambda req: frames.error_header(req.id, "weird", noisy)))
    with GuestClient(guest.host) as client:
        with pytest.raises(GuestError) as caught:
            client.ping(timeout=5)
        assert not client.closed  # an error answer is no protocol violation
    text = str(caught.value)
    assert "\x1b" not in text and "\x07" not in text and len(text) < 700


# --- workspace operations against a scripted, hostile guest ---------------------------------


def answer_with(
    result: dict[str, Any], output: list[tuple[str, bytes]] | None = None
) -> Callable[[ScriptedGuest], None]:
    def script(guest: ScriptedGuest) -> None:
        request = guest.next_request()
        for stream, data in output or []:
            guest.send(frames.out_header(request.id, stream), data)
        guest.send(frames.ok_header(request.id, result))

    return script


def lines(*items: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


ENTRY = {"path": "/workspace/d/f", "artifact_type": "file", "size_bytes": 1, "link_target": None}
MANIFEST = {"path": "f", "type": "file", "size": 1, "mtime_ns": 5, "sha256": "ab" * 32}


def listing(*items: dict[str, Any], **extra: Any) -> tuple[dict[str, Any], list[Any]]:
    data = lines(*items)
    result = {"entry_count": len(items), "truncated": False, "data_bytes": len(data), **extra}
    return result, [("data", data)]


def test_scripted_guest_well_formed_listing() -> None:
    result, output = listing(ENTRY)
    with GuestClient(ScriptedGuest(answer_with(result, output)).host) as client:
        got = client.list_files("d")
        assert got.entries[0].path == "/workspace/d/f" and not got.truncated


FILE_CASES: list[tuple[str, dict[str, Any], list[Any], str]] = [
    ("list", *listing({**ENTRY, "path": "/etc/passwd"}), "malformed path"),
    ("list", *listing({**ENTRY, "path": "/workspace/elsewhere"}), "outside the listed path"),
    ("list", *listing({**ENTRY, "artifact_type": "door"}), "entry type"),
    ("list", *listing({**ENTRY, "size_bytes": -1}), "size_bytes"),
    ("list", *listing(ENTRY, entry_count=2), "entry_count"),
    ("list", *listing(ENTRY, data_bytes=3), "data_bytes"),
    (
        "list",
        {"entry_count": 1, "truncated": False, "data_bytes": 5},
        [("data", b"{{{{\n")],
        "not JSON",
    ),
    ("manifest", *listing({**MANIFEST, "sha256": "xyz"}, hashed=1, started_ns=1), "sha256"),
    ("manifest", *listing({**MANIFEST, "path": "/abs"}, hashed=1, started_ns=1), "path"),
    ("manifest", *listing(MANIFEST, hashed=2, started_ns=1), "hashed"),
    (
        "read",
        {"bytes_read": 3, "size_bytes": 3, "truncated": False},
        [("data", b"ab")],
        "bytes_read",
    ),
    (
        "read",
        {"bytes_read": 2, "size_bytes": 2, "truncated": False},
        [("stdout", b"ab")],
        "nothing may arrive on stdout",
    ),
    ("read", {}, [("data", b"x" * 11)], "more than 10 bytes"),
    ("write", {"bytes_written": 4, "size_bytes": 4}, [], "bytes_written"),
    (
        "patch",
        *listing({"path": "/workspace/x", "status": "exploded", "source": None}),
        "status",
    ),
    (
        "tar",
        {"entry_count": 1, "bytes_written": 9, "artifact_type": "file", "skipped": 0},
        [("data", b"x")],
        "bytes_written",
    ),
    ("exec", GOOD_EXEC, [("data", b"x")], "nothing may arrive on data"),
]


def run_file_op(client: GuestClient, op: str) -> object:
    if op == "list":
        return client.list_files("d")
    if op == "manifest":
        return client.manifest()
    if op == "read":
        return client.read_file("f", max_bytes=10)
    if op == "write":
        return client.write_file("f", b"abc")
    if op == "patch":
        return client.apply_patch("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    if op == "tar":
        return client.create_tar("f", lambda chunk: None)
    return client.exec(["x"], timeout=5)


@pytest.mark.parametrize(("op", "result", "output", "message"), FILE_CASES)
def test_malformed_file_results_close_the_connection(
    op: str, result: dict[str, Any], output: list[tuple[str, bytes]], message: str
) -> None:
    client = GuestClient(ScriptedGuest(answer_with(result, output)).host)
    with pytest.raises(GuestError, match=message):
        run_file_op(client, op)
    assert client.closed
    client.close()


def test_a_guest_that_stops_reading_input_times_out_the_upload() -> None:
    let_go = threading.Event()

    def stall(guest: ScriptedGuest) -> None:
        guest.next_request()
        let_go.wait(WAIT)  # reads none of the input until the test is over

    guest = ScriptedGuest(stall)
    client = GuestClient(guest.host)
    with pytest.raises(PyroTimeoutError, match="stopped taking input"):
        client.write_file("f", bytes(32 * 1024 * 1024), timeout=1.0)
    # The guest never moved: only the client's own deadline can have ended the call.
    assert not guest.finished.is_set()
    assert client.closed  # half a frame went out: the connection cannot carry another
    with pytest.raises(GuestError, match="stalled"):
        client.ping()
    let_go.set()
    client.close()
