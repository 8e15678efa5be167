"""The boot probe: watching a VMM's console for the marker, the deadline, the kill, the cache."""

from __future__ import annotations

import json
import os
import select
from pathlib import Path

import pytest

from pyro_mcp.runtime import probe


def wait_until_dead(pid: int, limit_s: float = 10.0) -> bool:
    """True once `pid` has exited; False if it is still running after `limit_s`."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], limit_s)
        return bool(ready)
    finally:
        os.close(fd)


def test_the_marker_means_user_space_was_reached() -> None:
    ok, reason = probe._run_probe(["sh", "-c", "echo booting; echo PYRO_PROBE_OK 6.1.0"], 30)
    assert ok is True
    assert reason == "the guest kernel reached user space"


def test_a_marker_split_across_reads_is_found() -> None:
    command = ["sh", "-c", "printf 'x PYRO_PRO'; sleep 0.3; printf 'BE_OK\\n'; sleep 30"]
    assert probe._run_probe(command, 30)[0] is True


def test_the_deadline_ends_a_silent_boot_and_kills_the_whole_vmm(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The child starts a grandchild, as a wrapper script around the VMM would.
    command = ["sh", "-c", f"sleep 30 & echo $! > {pids}; echo booting slowly; wait"]
    ok, reason = probe._run_probe(command, 1.0)
    assert ok is False
    assert "did not reach user space within 1 s" in reason
    assert "(booting slowly)" in reason
    grandchild = int(pids.read_text())
    assert wait_until_dead(grandchild), "the probe left a process of the VMM running"


def test_watch_returns_the_console_it_saw() -> None:
    import subprocess

    proc = subprocess.Popen(["sh", "-c", "echo one; echo two"], stdout=subprocess.PIPE)
    try:
        ok, seen = probe._watch(proc, 30)
    finally:
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert ok is False
    assert seen == b"one\ntwo\n"


def test_a_vmm_that_refuses_to_start_is_reported_as_such() -> None:
    command = ["sh", "-c", "echo 'qemu-system-x86_64: -accel kvm: error: no KVM'; exit 1"]
    ok, reason = probe._run_probe(command, 30)
    assert ok is False
    assert (
        reason == "QEMU refused to start the guest: qemu-system-x86_64: -accel kvm: error: no KVM"
    )


def test_a_silent_exit_says_there_was_no_output() -> None:
    ok, reason = probe._run_probe(["true"], 30)
    assert ok is False
    assert "no console output" in reason


def test_probe_command_per_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        probe, "boot_args", lambda accel, *extra, quiet: f"{accel} {' '.join(extra)}"
    )
    kvm = probe.qemu_probe_command("/usr/bin/qemu", "kvm", Path("/k"), Path("/i"))
    tcg = probe.qemu_probe_command("/usr/bin/qemu", "tcg", Path("/k"), Path("/i"))
    assert kvm[0] == "/usr/bin/qemu"
    assert kvm[kvm.index("-accel") + 1] == "kvm" and kvm[kvm.index("-cpu") + 1] == "host"
    assert tcg[tcg.index("-accel") + 1] == "tcg" and tcg[tcg.index("-cpu") + 1] == "max"
    assert kvm[kvm.index("-kernel") + 1] == "/k" and kvm[kvm.index("-initrd") + 1] == "/i"
    assert "-no-reboot" in kvm
    assert kvm[kvm.index("-append") + 1] == "kvm pyro.probe=1"


class FakeRun:
    def __init__(self, ok: bool = True) -> None:
        self.calls: list[tuple[str, float]] = []
        self.ok = ok

    def __call__(self, command: list[str], deadline: float) -> tuple[bool, str]:
        self.calls.append((command[command.index("-accel") + 1], deadline))
        return self.ok, "fake reason"


def test_boot_probe_runs_once_then_answers_from_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeRun(ok=False)
    monkeypatch.setattr(probe, "_run_probe", fake)
    kernel_sha = "a" * 64
    first = probe.boot_probe("qemu", "7.2.0", "kvm", tmp_path / "k", tmp_path / "i", kernel_sha)
    assert (first.accel, first.ok, first.reason) == ("kvm", False, "fake reason")
    assert first.guest_kernel_sha256 == kernel_sha
    assert fake.calls == [("kvm", probe.KVM_DEADLINE_S)]
    again = probe.boot_probe("qemu", "7.2.0", "kvm", tmp_path / "k", tmp_path / "i", kernel_sha)
    assert again == first
    assert len(fake.calls) == 1
    assert probe.cached_probe("kvm", kernel_sha, "7.2.0") == first

    # Another accelerator, kernel or QEMU is another question.
    probe.boot_probe("qemu", "7.2.0", "tcg", tmp_path / "k", tmp_path / "i", kernel_sha)
    probe.boot_probe("qemu", "7.2.0", "kvm", tmp_path / "k", tmp_path / "i", "b" * 64)
    probe.boot_probe("qemu", "8.0.0", "kvm", tmp_path / "k", tmp_path / "i", kernel_sha)
    assert fake.calls[1:] == [
        ("tcg", probe.TCG_DEADLINE_S),
        ("kvm", probe.KVM_DEADLINE_S),
        ("kvm", probe.KVM_DEADLINE_S),
    ]
    probe.boot_probe(
        "qemu", "7.2.0", "kvm", tmp_path / "k", tmp_path / "i", kernel_sha, use_cache=False
    )
    assert len(fake.calls) == 5


def test_the_probe_cache_lives_under_the_pyro_directories(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(probe, "_run_probe", FakeRun())
    probe.boot_probe("qemu", "7.2.0", "tcg", tmp_path / "k", tmp_path / "i", "c" * 64)
    written = [p for p in tmp_path.rglob("*.json") if p.parent.name == "probes"]
    assert len(written) == 1
    assert written[0].is_relative_to(tmp_path / "pyro-cache") or written[0].is_relative_to(
        tmp_path / "pyro-state"
    )
    assert json.loads(written[0].read_text())["accel"] == "tcg"


def test_a_garbled_cache_entry_is_a_miss(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeRun()
    monkeypatch.setattr(probe, "_run_probe", fake)
    first = probe.boot_probe("qemu", "7.2.0", "tcg", tmp_path / "k", tmp_path / "i", "d" * 64)
    (entry,) = [p for p in tmp_path.rglob("*.json") if p.parent.name == "probes"]
    for garbage in ("{", json.dumps({"accel": "tcg"}), json.dumps([1])):
        entry.write_text(garbage)
        assert probe.cached_probe("tcg", "d" * 64, "7.2.0") is None
    probe.boot_probe("qemu", "7.2.0", "tcg", tmp_path / "k", tmp_path / "i", "d" * 64)
    assert len(fake.calls) == 2
    assert first.ok is True


def test_an_unwritable_probe_cache_does_not_fail_the_probe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PYRO_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setenv("PYRO_STATE_DIR", str(blocker / "state"))
    monkeypatch.setattr(probe, "_run_probe", FakeRun())
    result = probe.boot_probe("qemu", "7.2.0", "tcg", tmp_path / "k", tmp_path / "i", "e" * 64)
    assert result.ok is True
    assert probe.cached_probe("tcg", "e" * 64, "7.2.0") is None
