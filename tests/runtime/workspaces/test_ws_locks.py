"""Workspace locks: shared users together, a lifecycle change alone, a dead holder detected."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyro_mcp.errors import ConflictError
from pyro_mcp.runtime.workspaces import locks


def test_shared_holders_coexist_and_keep_an_exclusive_one_out(tmp_path: Path) -> None:
    with (
        locks.hold(tmp_path, locks.USE, exclusive=False, timeout=0),
        locks.hold(tmp_path, locks.USE, exclusive=False, timeout=0),
    ):
        started = time.monotonic()
        with (
            pytest.raises(ConflictError, match="busy"),
            locks.hold(tmp_path, locks.USE, exclusive=True, timeout=0.2),
        ):
            pass
        assert time.monotonic() - started >= 0.2
    with locks.hold(tmp_path, locks.USE, exclusive=True, timeout=0):
        assert not locks.is_free(tmp_path, locks.USE)
    assert locks.is_free(tmp_path, locks.USE)
    assert oct((tmp_path / locks.USE).stat().st_mode & 0o777) == "0o600"


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
