"""Shared fixtures: every test gets its own cache and state; one real build serves a whole run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from framework.fake_internet import fake_internet_fixture
from framework.host_network import host_network_untouched
from framework.net_vms import net_pyro
from framework.vm_leaks import leak_guard, vm_pyro
from pyro_mcp.environments import catalog
from pyro_mcp.host import tools
from pyro_mcp.sdk import Pyro

# Fixtures for every test: see framework/vm_leaks.py and framework/fake_internet.py (whose
# fixture is named `fake_internet`).
__all__ = [
    "fake_internet_fixture",
    "host_network_untouched",
    "leak_guard",
    "net_pyro",
    "vm_pyro",
]

# Test-only knobs (PYRO_TEST_*) survive the isolation below; every other PYRO_* variable is cleared.
TEST_CACHE_ENV = "PYRO_TEST_CACHE_DIR"


@pytest.fixture(autouse=True)
def isolated_pyro_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the cache and state at fresh temporary directories and drop the user's overrides."""
    for name in list(os.environ):
        if name.startswith("PYRO_") and not name.startswith("PYRO_TEST_"):
            monkeypatch.delenv(name)
    for name in ("XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYRO_CACHE_DIR", str(tmp_path / "pyro-cache"))
    monkeypatch.setenv("PYRO_STATE_DIR", str(tmp_path / "pyro-state"))
    # Standby VMs outlive the call that made them by design; tests that want one opt in.
    monkeypatch.setenv("PYRO_STANDBY", "0")


@dataclass(frozen=True)
class BuiltEnvironment:
    """A really built environment: `cache_dir` is what `Pyro(cache_dir=...)` takes."""

    name: str
    cache_dir: Path
    pull_result: dict[str, Any]

    def pyro(self) -> Pyro:
        return Pyro(cache_dir=self.cache_dir)


def _build_blockers() -> list[str]:
    reasons = []
    if os.geteuid() != 0:
        reasons.append("building an environment needs root (mmdebstrap --mode=root)")
    missing = [tool for tool in tools.IMAGE_BUILD_TOOLS if tool.path() is None]
    if missing:
        names = ", ".join(tool.command for tool in missing)
        packages = " ".join(sorted({tool.package for tool in missing}))
        reasons.append(f"missing {names}: apt-get install -y {packages}")
    return reasons


@pytest.fixture(scope="session")
def built_debian12(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltEnvironment]:
    """`debian:12`, built for real once per test run (or reused from $PYRO_TEST_CACHE_DIR).

    The pull is idempotent, so a developer can keep a cache between runs with
    `PYRO_TEST_CACHE_DIR=/some/dir`; only a missing or corrupt artefact is rebuilt.
    """
    blockers = _build_blockers()
    if blockers:
        pytest.skip("cannot build a real environment: " + "; ".join(blockers))
    override = os.environ.get(TEST_CACHE_ENV)
    cache_dir = Path(override) if override else tmp_path_factory.mktemp("pyro-build-cache")
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = catalog.DEFAULT_ENVIRONMENT
    # This runs before the per-test isolation: keep the state out of the user's directories too.
    state_dir = tmp_path_factory.mktemp("pyro-build-state")
    result = Pyro(cache_dir=cache_dir, state_dir=state_dir).pull_environment(name)
    yield BuiltEnvironment(name=name, cache_dir=cache_dir, pull_result=result)
    if not override:
        shutil.rmtree(cache_dir, ignore_errors=True)


REQUIRE_VM_TESTS_ENV = "PYRO_TEST_REQUIRE_VM"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With PYRO_TEST_REQUIRE_VM=1 (CI), a skipped VM test fails where QEMU can run it.

    Tests marked `kvm` need a hardware-capable KVM, which QEMU alone cannot stand in for.
    """
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and os.environ.get(REQUIRE_VM_TESTS_ENV) == "1"):
        return
    if item.get_closest_marker("vm") is None or item.get_closest_marker("kvm") is not None:
        return
    if tools.QEMU.path() is None:
        return
    report.outcome = "failed"
    report.longrepr = (
        f"{REQUIRE_VM_TESTS_ENV}=1 and QEMU is installed, but this VM test was skipped: "
        f"{report.longrepr}"
    )
