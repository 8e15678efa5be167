"""Interactive shells in the real agent process (a sandboxed workspace on this host), through
the host's typed calls (agent_client/shells.py) and, for the guest's own refusals, raw requests.

Nothing here asserts a duration: the idle wait is checked by what a read returns (which output
it waited for, which it did not), never by how long it took.
"""

from __future__ import annotations

import random
import re
import shlex
import socket
import sys
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
    live_session,
    short_workdir,
    start_agent,
    stop_agent,
    wait_until,
)
from pyro_mcp.agent import server as agent_module
from pyro_mcp.agent.shell_output import SEAL_CHARS, OutputRing
from pyro_mcp.agent_client import shells as sh
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    WrongStateError,
)
from pyro_mcp.protocol import frames
from pyro_mcp.protocol import shell_ops as so

PY311 = "/root/.pyenv/versions/3.11.7/bin/python3.11"
PROMPT = "pyro$ "


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_workdir("pyro-shells-") as path:
        yield path


def stop(agent: RunningAgent) -> None:
    """Close what a (failed) test left open, then check the agent left nothing behind."""
    with GuestClient.connect_unix(agent.socket_path, timeout=WAIT) as client:
        for shell in sh.list_shells(client):
            sh.close_shell(client, shell.shell_id)
    stop_agent(agent, forbid_traceback=True)


def has_line(text: str, line: str) -> bool:
    """Whether `line` is a whole line of the output (after the echoed command, bash ends
    bracketed paste with ESC[?2004l and a bare CR)."""
    return re.search(rf"[\r\n]{re.escape(line)}\r\n", text) is not None


@pytest.fixture
def running(workdir: Path) -> Iterator[RunningAgent]:
    agent = start_agent(workdir)
    yield agent
    stop(agent)


@pytest.fixture
def client(running: RunningAgent) -> Iterator[GuestClient]:
    with GuestClient.connect_unix(running.socket_path, timeout=WAIT) as connected:
        yield connected


class Reader:
    """Reads one shell onwards from where it left off, the way a client should."""

    def __init__(self, client: GuestClient, shell_id: str, cursor: int = 0) -> None:
        self.client, self.shell_id, self.cursor = client, shell_id, cursor
        self.text = ""

    def read(self, **kwargs: Any) -> sh.ShellOutput:
        got = sh.read_shell(self.client, self.shell_id, cursor=self.cursor, **kwargs)
        assert got.cursor == self.cursor, "output was lost"
        self.text += got.output
        self.cursor = got.next_cursor
        return got

    def until(self, pattern: str) -> re.Match[str]:
        """Read (each read waiting for a little quiet) until `pattern` matches the text."""
        found: list[re.Match[str]] = []

        def look() -> bool:
            self.read(wait_for_idle_ms=50)
            match = re.search(pattern, self.text)
            found[:] = [match] if match else []
            return bool(match)

        wait_until(look, f"{pattern!r} in the shell's output")
        return found[0]


def opened(client: GuestClient, **kwargs: Any) -> tuple[sh.ShellInfo, Reader]:
    """A new shell, read up to its first prompt."""
    info = sh.open_shell(client, **kwargs)
    reader = Reader(client, info.shell_id)
    reader.until(re.escape(PROMPT))
    return info, reader


def run(reader: Reader, command: str, marker: str) -> str:
    """Type `command; echo <marker>` and return the output up to the marker's line; the
    marker is typed split in two, so only its output matches."""
    half = len(marker) // 2
    start = len(reader.text)
    sh.write_shell(
        reader.client, reader.shell_id, f"{command}; echo '{marker[:half]}''{marker[half:]}'"
    )
    match = reader.until(rf"[\r\n]{re.escape(marker)}\r\n")
    return reader.text[start : match.end()]


# --- round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "python",
    [
        pytest.param(None, id="this-python"),
        pytest.param(
            PY311,
            id="python3.11-as-shipped",
            marks=pytest.mark.skipif(not Path(PY311).exists(), reason=f"{PY311} is missing"),
        ),
    ],
)
def test_open_write_read_round_trip_outlives_the_connection(
    workdir: Path, python: str | None
) -> None:
    agent = start_agent(workdir, python)
    try:
        with GuestClient.connect_unix(agent.socket_path, timeout=WAIT) as first:
            info = sh.open_shell(first)
        assert (info.cwd, info.cols, info.rows, info.state) == ("/workspace", 120, 30, "running")
        assert info.exit_code is None and info.ended_at is None and so.valid_shell_id(info.shell_id)
        # The connection that opened it is gone; the shell is not.
        with GuestClient.connect_unix(agent.socket_path, timeout=WAIT) as second:
            reader = Reader(second, info.shell_id)
            reader.until(re.escape(PROMPT))
            written, count = sh.write_shell(second, info.shell_id, "echo hello-$((6*7))")
            assert count == len("echo hello-$((6*7))\n") and written.state == "running"
            reader.until(r"[\r\n]hello-42\r\n")
            env = run(reader, "echo $TERM $(pwd) $-", "env-done")
            found = re.search(r"xterm-256color (\S+) (\S+)\r\n", env)
            assert found and found.group(1) == f"{agent.root}/workspace"
            assert "m" in found.group(2)  # job control: the PTY is the shell's terminal
            closed = sh.close_shell(second, info.shell_id)
        assert closed.state == "stopped" and closed.exit_code is not None
    finally:
        stop(agent)


def test_cwd_is_a_directory_inside_the_workspace(
    running: RunningAgent, client: GuestClient, workdir: Path
) -> None:
    ws = running.root / "workspace"
    (ws / "sub" / "deeper").mkdir(parents=True)
    (ws / "out").symlink_to(workdir)
    (ws / "file").write_text("x")
    info, reader = opened(client, cwd="sub/deeper")
    assert info.cwd == "/workspace/sub/deeper"
    assert f"{ws}/sub/deeper" in run(reader, "pwd", "pwd-done")
    for outside in ("/etc", "../x", "/workspace/../etc", "sub/../../x"):
        with pytest.raises(InvalidArgumentError, match=r"outside /workspace|contains '\.\.'"):
            sh.open_shell(client, cwd=outside)  # refused on the host
        answer = Raw(running.socket_path)
        answer.hello()
        refused = answer.call(2, "shell.open", {"cwd": outside})  # and by the guest
        answer.close()
        assert refused["error"]["code"] == frames.ERR_INVALID_ARGUMENT, refused
    with pytest.raises(InvalidArgumentError, match="leads outside /workspace through a symlink"):
        sh.open_shell(client, cwd="out")
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        sh.open_shell(client, cwd="file")
    with pytest.raises(NotFoundError, match="does not exist"):
        sh.open_shell(client, cwd="missing")
    assert [s.shell_id for s in sh.list_shells(client)] == [info.shell_id]


def test_unknown_shells_and_bad_arguments(client: GuestClient) -> None:
    for call in (
        lambda: sh.read_shell(client, "0123456789ab"),
        lambda: sh.write_shell(client, "0123456789ab", "true"),
        lambda: sh.signal_shell(client, "0123456789ab"),
        lambda: sh.resize_shell(client, "0123456789ab", cols=80, rows=24),
        lambda: sh.close_shell(client, "0123456789ab"),
    ):
        with pytest.raises(NotFoundError, match="shell 0123456789ab does not exist"):
            call()
    info, _ = opened(client)
    bad: list[tuple[Any, str]] = [
        (lambda: sh.read_shell(client, "nope"), "shell_id must be"),
        (lambda: sh.read_shell(client, info.shell_id, max_chars=0), "max_chars"),
        (lambda: sh.read_shell(client, info.shell_id, wait_for_idle_ms=10_001), "wait_for"),
        (lambda: sh.signal_shell(client, info.shell_id, "STOP"), "HUP, INT, TERM, KILL"),
        (lambda: sh.open_shell(client, cols=0), "cols"),
        (lambda: sh.write_shell(client, info.shell_id, "\x01" * 20_000), "too long"),
        (lambda: sh.read_shell(client, info.shell_id, cursor=10**9), "past the end"),
    ]
    for call, message in bad:
        with pytest.raises(InvalidArgumentError, match=message):
            call()


def test_a_guest_holds_a_bounded_number_of_shells(client: GuestClient) -> None:
    for _ in range(so.MAX_SHELLS):
        sh.open_shell(client)
    with pytest.raises(ConflictError, match=f"already has {so.MAX_SHELLS} shells"):
        sh.open_shell(client)


# --- waiting for quiet, signals, size ----------------------------------------------------


def test_a_read_waits_for_quiet_and_returns_while_the_program_runs(client: GuestClient) -> None:
    info, reader = opened(client)
    command = "printf 'one\\n'; sleep 0.2; printf 'two\\n'; sleep 0.2; echo thr''ee"
    sh.write_shell(client, info.shell_id, command)
    # The gaps are shorter than the quiet asked for: the read waits through both of them.
    got = reader.read(wait_for_idle_ms=3000)
    assert got.idle and has_line(reader.text, "three")
    sh.write_shell(client, info.shell_id, "sleep 60; echo la''te")
    # Quiet is reached while `sleep` still runs: the read answers without its output.
    got = reader.read(wait_for_idle_ms=300)
    assert got.idle and got.shell.state == "running" and "\r\nlate" not in reader.text
    sh.signal_shell(client, info.shell_id, "INT")


def test_a_cancelled_wait_answers_at_once(running: RunningAgent, client: GuestClient) -> None:
    info, reader = opened(client)
    raw = Raw(running.socket_path)
    raw.hello()
    params = {"shell_id": info.shell_id, "cursor": reader.cursor, "wait_for_idle_ms": 10_000}
    raw.request(2, "shell.read", params)
    raw.send(frames.cancel_header(2))
    answer = raw.until_result(2)[1]
    raw.close()
    # A quiet shell would have answered idle after the full wait; the cancel cut it short.
    assert answer["ok"] and answer["result"]["idle"] is False


def test_a_never_quiet_program_still_gets_an_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process agent with the cap on the wait lowered, and a program that never pauses."""
    monkeypatch.setattr(so, "IDLE_WAIT_CAP_S", 0.5)
    agent = agent_module.Agent(agent_module.AgentConfig.sandboxed(str(tmp_path)))
    host, guest = socket.socketpair()
    thread = threading.Thread(target=agent.serve_connection, args=(guest,))
    thread.start()
    try:
        with GuestClient(host) as client:
            client.hello()
            info, reader = opened(client)
            sh.write_shell(client, info.shell_id, "while :; do echo tick; sleep 0.01; done")
            got = reader.read(wait_for_idle_ms=10_000)
            assert not got.idle and "tick" in got.output
    finally:
        agent.stop()
        thread.join(WAIT)
        guest.close()


def test_int_interrupts_the_foreground_job_and_the_shell_survives(client: GuestClient) -> None:
    info, reader = opened(client)
    sh.write_shell(client, info.shell_id, "sleep 1000")
    reader.read(wait_for_idle_ms=200)
    signalled = sh.signal_shell(client, info.shell_id, "INT")
    assert signalled.state == "running"
    reader.until(re.escape(PROMPT) + "$")  # the prompt is back
    assert has_line(run(reader, "echo $?", "status-done"), "130")
    assert sh.read_shell(client, info.shell_id).shell.state == "running"


def test_resize_is_what_the_program_sees(client: GuestClient) -> None:
    info, reader = opened(client, cols=90, rows=20)
    assert has_line(run(reader, "stty size", "size-1"), "20 90")
    resized = sh.resize_shell(client, info.shell_id, cols=132, rows=43)
    assert (resized.cols, resized.rows) == (132, 43)
    assert has_line(run(reader, "stty size", "size-2"), "43 132")


# --- cursors and the ring --------------------------------------------------------------------


def test_cursors_are_exact_across_many_small_reads(client: GuestClient) -> None:
    info, reader = opened(client)
    start = reader.cursor
    run(reader, "seq 1 2000; printf 'é中🙂%.0s' $(seq 1 300); echo", "seq-done")
    end = reader.cursor
    whole = sh.read_shell(client, info.shell_id, cursor=start, max_chars=end - start).output
    assert whole == reader.text[-(end - start) :]
    pieces: list[str] = []
    cursor, sizes = start, [1, 2, 3, 7, 97, 1000]
    while cursor < end:
        size = sizes[len(pieces) % len(sizes)]
        got = sh.read_shell(client, info.shell_id, cursor=cursor, max_chars=min(size, end - cursor))
        assert got.cursor == cursor and got.next_cursor - got.cursor == len(got.output) <= size
        assert got.truncated or got.next_cursor >= end  # cut by max_chars: it says so
        pieces.append(got.output)
        cursor = got.next_cursor
    assert "".join(pieces) == whole and "é中🙂" * 300 in whole and "\ufffd" not in whole


def test_a_cursor_older_than_the_ring_resumes_at_the_oldest_kept(client: GuestClient) -> None:
    info, reader = opened(client)
    sh.write_shell(client, info.shell_id, "seq 1 250000; echo fin''ished")
    cursor, tail = reader.cursor, ""

    def finished() -> bool:
        nonlocal cursor, tail
        got = sh.read_shell(client, info.shell_id, cursor=cursor, wait_for_idle_ms=100)
        cursor, tail = got.next_cursor, (tail + got.output)[-200:]
        return has_line(tail, "finished") and tail.endswith(PROMPT)

    wait_until(finished, "seq to finish")
    oldest = sh.read_shell(client, info.shell_id, cursor=0, max_chars=100)
    assert oldest.truncated and oldest.cursor == cursor - so.RING_CHARS > 0
    kept = sh.read_shell(client, info.shell_id, cursor=oldest.cursor, max_chars=so.RING_CHARS)
    assert not kept.truncated and kept.next_cursor == cursor
    assert kept.output.startswith(oldest.output) and len(kept.output) == so.RING_CHARS
    printed = kept.output[: kept.output.index("finished\r\n")]
    seq = "".join(f"{i}\r\n" for i in range(1, 250_001))
    assert seq.endswith(printed) and len(printed) > so.RING_CHARS - 100


GENERATOR = """\
import sys
count, out = int(sys.argv[1]), sys.stdout.buffer
for first in range(0, count, 50_000):
    out.write(b"".join(b"%010d\\n" % i for i in range(first, min(count, first + 50_000))))
out.flush()
"""
RECORD = re.compile(r"(?<=\n)(\d{10})\r\n")


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def check_window(got: sh.ShellOutput, origins: set[int]) -> None:
    """Every complete record in the window is where record 0's offset says it must be."""
    matches = list(RECORD.finditer(got.output))
    if len(matches) < 2:
        return
    first, last = int(matches[0].group(1)), int(matches[-1].group(1))
    origins.add(got.cursor + matches[0].start() - 12 * first)
    expected = "".join(f"{i:010d}\r\n" for i in range(first, last + 1))
    assert got.output[matches[0].start() : matches[-1].end()] == expected


def test_100_mb_of_output_keeps_memory_bounded_and_cursors_exact(
    running: RunningAgent, client: GuestClient
) -> None:
    (running.root / "workspace" / "gen.py").write_text(GENERATOR)
    info, reader = opened(client)
    before = peak_rss_kib(running.proc.pid)
    records = 100_000_000 // 11
    command = f"{shlex.quote(sys.executable)} gen.py {records}; echo 'gen''erated'"
    sh.write_shell(client, info.shell_id, command)
    cursor, origins, skipped, done = reader.cursor, set[int](), 0, ""
    while not has_line(done, "generated"):
        # Slower than the producer on purpose: the ring must drop what this reader misses.
        time.sleep(0.02)
        got = sh.read_shell(client, info.shell_id, cursor=cursor)
        skipped += got.cursor - cursor
        check_window(got, origins)
        done = done[-64:] + got.output
        cursor = got.next_cursor
    growth_mib = (peak_rss_kib(running.proc.pid) - before) / 1024
    assert growth_mib < 48, f"the agent's peak memory grew by {growth_mib:.0f} MiB"
    assert len(origins) == 1, f"records seen at inconsistent offsets: {sorted(origins)[:5]}"
    assert skipped > 0  # the reader fell behind and was told (the client checks `truncated`)
    final = sh.read_shell(client, info.shell_id, cursor=origins.pop() + 12 * records, max_chars=40)
    assert final.output.startswith("generated\r\n")


def test_a_read_goes_on_while_another_client_writes(running: RunningAgent) -> None:
    with GuestClient.connect_unix(running.socket_path, timeout=WAIT) as first:
        info, reader = opened(first)
        results: list[sh.ShellOutput] = []
        waiting = threading.Thread(
            target=lambda: results.append(reader.read(wait_for_idle_ms=4000)), daemon=True
        )
        waiting.start()
        with GuestClient.connect_unix(running.socket_path, timeout=WAIT) as second:
            sh.write_shell(second, info.shell_id, "echo from-$((1+1))")
            assert waiting.is_alive()  # the write did not wait for the read
        waiting.join(WAIT)
        assert results and results[0].idle and has_line(results[0].output, "from-2")


# --- the end of a shell --------------------------------------------------------------------


def test_a_shell_that_exits_is_stopped_with_its_exit_code(client: GuestClient) -> None:
    info, reader = opened(client)
    sh.write_shell(client, info.shell_id, "echo by''e; exit 3")
    reader.until(r"[\r\n]bye\r\n")
    wait_until(lambda: reader.read().shell.state == "stopped", "the shell to stop")
    stopped = reader.read().shell
    assert stopped.exit_code == 3 and stopped.ended_at is not None
    for call in (
        lambda: sh.write_shell(client, info.shell_id, "true"),
        lambda: sh.signal_shell(client, info.shell_id, "INT"),
        lambda: sh.resize_shell(client, info.shell_id, cols=80, rows=24),
    ):
        with pytest.raises(WrongStateError, match=r"has exited \(exit code 3\)"):
            call()
    assert "bye" in sh.read_shell(client, info.shell_id).output  # still readable
    assert sh.close_shell(client, info.shell_id).exit_code == 3


def test_close_ends_every_process_of_the_shell(running: RunningAgent, client: GuestClient) -> None:
    info, reader = opened(client)
    jobs = "sleep 1000 & nohup sleep 1000 >/dev/null 2>&1 & trap '' HUP; sleep 1000"
    sh.write_shell(client, info.shell_id, f"echo sid=$$; ({jobs}) & sleep 1000")
    sid = int(reader.until(r"sid=(\d+)\r\n").group(1))
    wait_until(lambda: len(live_session(sid)) >= 5, "the shell's jobs to start")
    closed = sh.close_shell(client, info.shell_id)
    assert closed.state == "stopped" and closed.exit_code is not None
    assert not live_session(sid)
    with pytest.raises(NotFoundError):
        sh.read_shell(client, info.shell_id)


def test_the_agent_closes_its_shells_when_it_stops(workdir: Path) -> None:
    agent = start_agent(workdir)
    with GuestClient.connect_unix(agent.socket_path, timeout=WAIT) as client:
        info, reader = opened(client)
        sid = int(re.findall(r"sid=(\d+)", run(reader, "echo sid=$$", "sid-done"))[-1])
    agent.proc.terminate()  # the agent closes its shells on the way out
    assert agent.proc.wait(WAIT) == 0
    assert not live_session(sid)
    assert info.shell_id and "Traceback" not in agent.log.read_text()


# --- the ring itself -----------------------------------------------------------------------


def test_the_ring_keeps_the_last_capacity_characters_exactly() -> None:
    rng = random.Random(7)
    ring, reference = OutputRing(3 * SEAL_CHARS + 5), ""
    alphabet = "abcé中🙂\r\n"
    for _ in range(3000):
        piece = "".join(rng.choice(alphabet) for _ in range(rng.choice([1, 3, 50, 5000])))
        ring.append(piece)
        reference += piece
        assert ring.end == len(reference)
        assert ring.start == max(0, len(reference) - ring.capacity)
        cursor = rng.randrange(0, len(reference) + 1)
        limit = rng.choice([1, 10, 4096, 20_000])
        begin, text = ring.slice(cursor, limit)
        assert begin == max(cursor, ring.start)
        assert text == reference[begin : begin + limit]
    assert ring.slice(ring.end, 10) == (ring.end, "")
