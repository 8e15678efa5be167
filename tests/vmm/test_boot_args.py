"""The guest kernel command line, and the TSC rate that only a TCG guest on a steady TSC gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyro_mcp.vmm import boot_args as ba

STEADY = "processor\t: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\ncpu MHz\t\t: 2999.998\n"
UNSTEADY = "processor\t: 0\nflags\t\t: fpu tsc\ncpu MHz\t\t: 2999.998\n"


def use_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str | None) -> None:
    """Make boot_args read `text` (or a missing file) instead of /proc/cpuinfo."""
    fake = tmp_path / "cpuinfo"
    if text is not None:
        fake.write_text(text)
    real_path = ba.Path

    def path(value: str) -> Path:
        return fake if value == "/proc/cpuinfo" else real_path(value)

    monkeypatch.setattr(ba, "Path", path)


def test_host_tsc_khz_with_a_constant_tsc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_cpuinfo(monkeypatch, tmp_path, STEADY)
    assert ba.host_tsc_khz() == 2999998


@pytest.mark.parametrize(
    "text",
    [
        UNSTEADY,
        None,  # unreadable
        "flags\t\t: constant_tsc\n",  # no rate given
        "flags\t\t: fpu\nbugs\t\t: constant_tsc_is_not_a_flag_here\ncpu MHz\t: 1000.0\n",
    ],
)
def test_host_tsc_khz_is_none_without_a_promised_rate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str | None
) -> None:
    use_cpuinfo(monkeypatch, tmp_path, text)
    assert ba.host_tsc_khz() is None


def test_tcg_gets_the_tsc_rate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_cpuinfo(monkeypatch, tmp_path, STEADY)
    args = ba.boot_args("tcg").split()
    assert "tsc_early_khz=2999998" in args


def test_kvm_never_gets_the_tsc_rate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_cpuinfo(monkeypatch, tmp_path, STEADY)
    assert "tsc_early_khz" not in ba.boot_args("kvm")
    assert "tsc=reliable" not in ba.boot_args("kvm")


def test_tcg_without_a_constant_tsc_gets_no_rate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_cpuinfo(monkeypatch, tmp_path, UNSTEADY)
    assert "tsc_early_khz" not in ba.boot_args("tcg")


def test_base_arguments_quiet_and_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ba, "host_tsc_khz", lambda: 1234)
    args = ba.boot_args("tcg", "pyro.probe=1", "pyro.x=y").split()
    assert args[:5] == ["console=ttyS0", "reboot=k", "panic=-1", "i8042.noaux", "i8042.nomux"]
    assert "quiet" in args
    assert args[-4:] == ["tsc_early_khz=1234", "tsc=reliable", "pyro.probe=1", "pyro.x=y"]
    assert "quiet" not in ba.boot_args("kvm", quiet=False).split()
