"""ProcessRef: a process is its pid plus its start time, and a zombie is dead."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.waiting import WAIT, wait_until
from pyro_mcp.host.process import ProcessRef, start_time


def proc_state(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()[0]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_this_process_is_alive_and_its_identity_is_stable() -> None:
    me = ProcessRef.me()
    assert me.pid == os.getpid()
    assert me.alive()
    assert ProcessRef.of(os.getpid()) == me
    assert start_time(os.getpid()) == me.start


def test_a_pid_that_does_not_exist_has_no_ref() -> None:
    # Above the largest pid the kernel hands out.
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert start_time(pid_max + 1) is None
    assert ProcessRef.of(pid_max + 1) is None
    ghost = ProcessRef(pid_max + 1, 1)
    assert not ghost.alive()
    assert ghost.signal(signal.SIGTERM) is False


def test_a_recycled_pid_with_another_start_time_is_not_the_same_process(
    sleeper: subprocess.Popen[bytes],
) -> None:
    real = ProcessRef.of(sleeper.pid)
    assert real is not None and real.alive()
    impostor = ProcessRef(sleeper.pid, real.start + 1)
    assert not impostor.alive()
    assert impostor.signal(signal.SIGKILL) is False  # must not touch the real process
    assert sleeper.poll() is None and real.alive()


def test_a_zombie_counts_as_dead(sleeper: subprocess.Popen[bytes]) -> None:
    ref = ProcessRef.of(sleeper.pid)
    assert ref is not None
    os.kill(sleeper.pid, signal.SIGKILL)
    # Not reaped yet: a zombie.
    wait_until(lambda: proc_state(sleeper.pid) == "Z", "the child to become a zombie")
    assert start_time(sleeper.pid) == ref.start  # still in /proc ...
    assert not ref.alive()  # ... but dead
    assert ref.signal(signal.SIGTERM) is False


def test_signal_reaches_a_live_process_and_reports_false_once_it_is_gone(
    sleeper: subprocess.Popen[bytes],
) -> None:
    ref = ProcessRef.of(sleeper.pid)
    assert ref is not None
    assert ref.signal(signal.SIGTERM) is True
    assert sleeper.wait(timeout=WAIT) == -signal.SIGTERM
    assert not ref.alive()
    assert ref.signal(signal.SIGTERM) is False


def test_start_time_parses_a_command_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    odd = tmp_path / "a) (b c) d"
    shutil.copy(sleep, odd)
    proc = subprocess.Popen([str(odd), "60"])
    try:
        wait_until(
            lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == odd.name[:15],
            "the exec of the oddly named program",
        )
        ref = ProcessRef.of(proc.pid)
        assert ref is not None and ref.alive()
        stat_fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert ref.start == int(stat_fields[19])
    finally:
        proc.kill()
        proc.wait()
