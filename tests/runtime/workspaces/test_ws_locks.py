"""Workspace locks: shared users together, a lifecycle change alone, a dead holder detected."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from framework.waiting import WAIT
from pyro_mcp.errors import ConflictError
from pyro_mcp.runtime.workspaces import locks


def test_shared_holders_coexist_and_keep_an_exclusive_one_out(tmp_path: Path) -> None:
    with (
        locks.hold(tmp_path, locks.USE, exclusive=False, timeout=0),
        locks.hold(tmp_path, locks.USE, exclusive=False, timeout=0),
        pytest.raises(ConflictError, match="busy"),
        locks.hold(tmp_path, locks.USE, exclusive=True, timeout=0.2),
    ):
        pass
    with locks.hold(tmp_path, locks.USE, exclusive=True, timeout=0):
        assert not locks.is_free(tmp_path, locks.USE)
    assert locks.is_free(tmp_path, locks.USE)
    assert oct((tmp_path / locks.USE).stat().st_mode & 0o777) == "0o600"


def test_an_exclusive_waiter_gets_the_lock_once_the_shared_holder_leaves(tmp_path: Path) -> None:
    # flock locks belong to open files, so a thread of this process competes like another one.
    events: list[str] = []
    acquired = threading.Event()

    def exclusive() -> None:
        with locks.hold(tmp_path, locks.USE, exclusive=True, timeout=WAIT):
            events.append("exclusive")
            acquired.set()

    with locks.hold(tmp_path, locks.USE, exclusive=False, timeout=0):
        waiter = threading.Thread(target=exclusive)
        waiter.start()
        assert not acquired.wait(0.3)  # it waits while the shared holder is in
        events.append("shared released")
    assert acquired.wait(WAIT)
    waiter.join(WAIT)
    assert events == ["shared released", "exclusive"]


def test_a_lock_is_free_once_its_holder_process_dies(tmp_path: Path) -> None:
    assert locks.is_free(tmp_path, locks.LIFE)  # no lock file yet
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from pyro_mcp.runtime.workspaces "
            "import locks\nwith locks.hold(Path(sys.argv[1]), locks.LIFE, exclusive=True, "
            "timeout=5):\n    print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert not locks.is_free(tmp_path, locks.LIFE)
    finally:
        holder.kill()
        holder.wait()
    assert locks.is_free(tmp_path, locks.LIFE)
    assert os.path.exists(tmp_path / locks.LIFE)
