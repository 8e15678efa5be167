"""`pyro run` and `pyro demo` as real processes booting real VMs, and what a signal to them does.

The CLI runs as `python -m pyro_mcp.cli.main` with this test's own state directory and the
built debian:12 cache; `leak_guard` (conftest.py) proves afterwards that nothing was left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pyro_mcp import paths
from pyro_mcp.state.store import StateStore

if TYPE_CHECKING:
    from framework.vm_leaks import LeakGuard

pytestmark = [pytest.mark.integration, pytest.mark.vm]

BOOT_LIMIT = 240.0  # TCG boot timeout (180 s) plus building nothing: the cache is warm
EXIT_LIMIT = 60.0
CLEANUP_DEADLINE = 15.0


def _default_sigint() -> None:
    # A test run started in the background of a non-interactive shell inherits SIGINT ignored,
    # and so would pyro (Python then never raises KeyboardInterrupt): give pyro the default a
    # terminal's user has, since the signal tests are about that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Cli:
    """`pyro ARGS...` in a subprocess, its output collected as it comes."""

    def __init__(self, args: list[str], cache_dir: Path) -> None:
        env = {**os.environ, "PYRO_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyro_mcp.cli.main", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=_default_sigint,
        )
        self.output = {"stdout": bytearray(), "stderr": bytearray()}
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._pump, args=(name, pipe), daemon=True)
            for name, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, name: str, pipe: Any) -> None:
        while chunk := pipe.read1(65536):
            with self._lock:
                self.output[name] += chunk

    def text(self, name: str) -> str:
        with self._lock:
            return self.output[name].decode(errors="replace")

    def wait_for(self, name: str, needle: str, limit: float) -> None:
        deadline = time.monotonic() + limit
        while needle not in self.text(name):
            if self.proc.poll() is not None:
                self.finish()
                pytest.fail(
                    f"pyro exited ({self.proc.returncode}) before {needle!r} on {name}:\n"
                    f"{self.text('stderr')}"
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no {needle!r} on {name} within {limit:g} s:\n{self.text('stderr')}")
            time.sleep(0.02)

    def finish(self, limit: float = EXIT_LIMIT) -> int:
        try:
            code = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"pyro did not exit within {limit:g} s:\n{self.text('stderr')}")
        for reader in self._readers:
            reader.join(EXIT_LIMIT)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def pyro(built_debian12: Any, *args: str) -> Cli:
    return Cli(list(args), built_debian12.cache_dir)


def only_row(store: StateStore) -> dict[str, Any]:
    rows = store.list_vms()
    assert len(rows) == 1, rows
    return rows[0]


# --- results and exit codes ------------------------------------------------------------------


def test_the_guest_exit_code_becomes_the_cli_exit_code(
    built_debian12: Any, leak_guard: LeakGuard
) -> None:
    # One argument with spaces is a shell command line; output streams to our stdout/stderr.
    cli = pyro(built_debian12, "run", "debian:12", "--", "echo out; echo err >&2; exit 7")
    assert cli.finish(BOOT_LIMIT) == 7
    assert cli.text("stdout") == "out\n"
    err = cli.text("stderr")
    assert "[run] phase=create environment=debian:12" in err
    assert "[run] phase=execute" in err
    assert "err\n" in err
    assert "exit_code=7" in err and "execution_mode=" in err


def test_options_before_and_after_the_environment_and_json_output(
    built_debian12: Any, leak_guard: LeakGuard
) -> None:
    cli = pyro(
        built_debian12,
        "run", "--json", "debian:12", "--timeout-seconds", "2",
        "--", "sh", "-c", "printf '%s|' \"$@\"; sleep 30", "x", "a b", "it's", "--", "",
    )  # fmt: skip
    assert cli.finish(BOOT_LIMIT) == 124  # the 2 s timeout applied
    result = json.loads(cli.text("stdout"))
    assert result["exit_code"] == 124 and result["timed_out"] is True
    assert result["stdout"] == "a b|it's|--||"
    assert result["cleanup"]["reason"] == "post_exec_cleanup"
    assert "[run] phase=" not in cli.text("stderr")  # --json: no phase lines


def test_a_short_timeout_option_after_the_environment_before_double_dash(
    built_debian12: Any, leak_guard: LeakGuard
) -> None:
    cli = pyro(built_debian12, "run", "debian:12", "--timeout-seconds", "5", "--", "true")
    assert cli.finish(BOOT_LIMIT) == 0
    assert cli.text("stdout") == ""
    assert "exit_code=0" in cli.text("stderr")


def test_demo_prints_the_guest_git_version_as_json(
    built_debian12: Any, leak_guard: LeakGuard
) -> None:
    cli = pyro(built_debian12, "demo")
    assert cli.finish(BOOT_LIMIT) == 0
    result = json.loads(cli.text("stdout"))
    assert result["exit_code"] == 0
    assert result["stdout"].startswith("git version ")
    assert result["command"] == "git --version"
    assert result["environment"] == "debian:12"


# --- signals ---------------------------------------------------------------------------------


def start_long_run(built_debian12: Any, leak_guard: LeakGuard) -> tuple[Cli, Any, Any, Path]:
    """`pyro run` in the middle of a command: (cli, supervisor, VMM, VM directory)."""
    cli = pyro(built_debian12, "run", "debian:12", "--", "sh", "-c", "echo running; exec sleep 60")
    cli.wait_for("stderr", "[run] phase=execute", BOOT_LIMIT)
    cli.wait_for("stdout", "running", EXIT_LIMIT)  # the command runs in the guest now
    row = only_row(StateStore(paths.state_dir()))
    assert row["state"] == "started"
    sup = leak_guard.add_supervisor_of(row)
    vmm = leak_guard.vmm_of(sup)
    assert sup.alive() and vmm.alive()
    return cli, sup, vmm, Path(row["vm_dir"])


def test_sigint_of_pyro_run_removes_the_vm_before_the_cli_exits(
    built_debian12: Any, leak_guard: LeakGuard
) -> None:
    cli, sup, vmm, vm_dir = start_long_run(built_debian12, leak_guard)
    cli.proc.send_signal(signal.SIGINT)
    code = cli.finish()
    # The moment it has exited: no record, no process, no file.
    left = {
        "rows": StateStore(paths.state_dir()).list_vms(),
        "supervisor alive": sup.alive(),
        "VMM alive": vmm.alive(),
        "VM directory exists": vm_dir.exists(),
    }
    assert left == {
        "rows": [],
        "supervisor alive": False,
        "VMM alive": False,
        "VM directory exists": False,
    }
    assert code == 130
    assert "interrupted" in cli.text("stderr")


def test_sigkill_of_pyro_run_makes_the_supervisor_remove_the_vm(
    built_debian12: Any, leak_guard: LeakGuard
) -> None:
    cli, sup, vmm, vm_dir = start_long_run(built_debian12, leak_guard)
    store = StateStore(paths.state_dir())
    cli.proc.send_signal(signal.SIGKILL)
    assert cli.finish() == -signal.SIGKILL

    def gone() -> bool:
        return not store.list_vms() and not sup.alive() and not vmm.alive() and not vm_dir.exists()

    leak_guard.wait_until(gone, "the supervisor to remove the orphaned VM", CLEANUP_DEADLINE)


def test_sigint_of_pyro_run_during_the_boot_removes_the_vm_before_the_cli_exits(
    built_debian12: Any, leak_guard: LeakGuard
) -> None:
    cli = pyro(built_debian12, "run", "debian:12", "--", "true")
    cli.wait_for("stderr", "[run] phase=start", BOOT_LIMIT)
    # The signal lands while the guest boots (that takes seconds under TCG); whenever it
    # lands, the VM must be gone by the time the CLI has exited.
    store = StateStore(paths.state_dir())
    leak_guard.wait_until(
        lambda: any(row["supervisor_pid"] for row in store.list_vms()),
        "the supervisor to be recorded",
        EXIT_LIMIT,
    )
    row = only_row(store)
    sup = leak_guard.add_supervisor_of(row)
    vmm = leak_guard.vmm_of(sup)
    cli.proc.send_signal(signal.SIGINT)
    code = cli.finish()
    left = {
        "rows": store.list_vms(),
        "supervisor alive": sup.alive(),
        "VMM alive": vmm.alive(),
        "VM directory exists": Path(row["vm_dir"]).exists(),
    }
    assert left == {
        "rows": [],
        "supervisor alive": False,
        "VMM alive": False,
        "VM directory exists": False,
    }
    assert code == 130
