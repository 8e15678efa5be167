"""Finding Firecracker and its jailer, and asking a binary for its version."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from framework.firecracker_harness import executable
from pyro_mcp.errors import HostRequirementError, VmmError
from pyro_mcp.vmm.firecracker import locate

VERSION = "1.12.1"
FAKE_FC = f'#!/bin/sh\necho "Firecracker v{VERSION}"\n'


@pytest.fixture(autouse=True)
def nothing_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No firecracker or jailer on PATH (the root conftest has already cleared PYRO_*)."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))


# --- find -----------------------------------------------------------------------------------


def test_find_returns_none_when_nothing_is_available() -> None:
    assert locate.find_firecracker() is None


def test_find_prefers_env_then_cache_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = executable(tmp_path / "bin" / "firecracker")
    path_jailer = executable(tmp_path / "bin" / "jailer")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert locate.find_firecracker() == locate.FirecrackerBinary(on_path, path_jailer, "path")

    cached = executable(locate.default_install_root() / VERSION / "firecracker")
    cached_jailer = executable(cached.parent / "jailer")
    assert locate.find_firecracker() == locate.FirecrackerBinary(cached, cached_jailer, "cache")

    env_bin = executable(tmp_path / "custom" / "fc")
    monkeypatch.setenv(locate.BIN_ENV, str(env_bin))
    assert locate.find_firecracker() == locate.FirecrackerBinary(env_bin, path_jailer, "env")

    env_jailer = executable(tmp_path / "custom" / "my-jailer")
    monkeypatch.setenv(locate.JAILER_ENV, str(env_jailer))
    assert locate.find_firecracker() == locate.FirecrackerBinary(env_bin, env_jailer, "env")


def test_find_ignores_non_executable_cache_entry(tmp_path: Path) -> None:
    cached = locate.default_install_root() / VERSION / "firecracker"
    cached.parent.mkdir(parents=True)
    cached.write_text("not executable")
    assert locate.find_firecracker() is None


@pytest.mark.parametrize("variable", [locate.BIN_ENV, locate.JAILER_ENV])
def test_env_var_naming_a_missing_file_is_a_host_requirement_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(locate.BIN_ENV, str(executable(tmp_path / "fc")))
    monkeypatch.setenv(variable, str(tmp_path / "missing"))
    with pytest.raises(HostRequirementError, match=variable):
        locate.find_firecracker()


# --- version --------------------------------------------------------------------------------


def test_version_is_parsed(tmp_path: Path) -> None:
    binary = locate.FirecrackerBinary(executable(tmp_path / "fc", FAKE_FC), None, "env")
    assert binary.version() == VERSION


def test_version_rejects_other_programs(tmp_path: Path) -> None:
    with pytest.raises(VmmError, match="without a Firecracker version"):
        locate.firecracker_version(executable(tmp_path / "fc", "#!/bin/sh\necho hello\n"))


def test_version_of_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(HostRequirementError, match="cannot run"):
        locate.firecracker_version(tmp_path / "missing")


def test_version_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sleep = shutil.which("sleep", path=os.defpath)
    monkeypatch.setattr(locate, "VERSION_TIMEOUT_S", 0.2)
    with pytest.raises(VmmError, match="did not answer"):
        locate.firecracker_version(executable(tmp_path / "fc", f"#!/bin/sh\nexec {sleep} 5\n"))
