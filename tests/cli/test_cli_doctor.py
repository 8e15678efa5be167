"""`pyro doctor`: JSON and human output, and its exit status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pyro_mcp.cli.main import main
from pyro_mcp.runtime import doctor, probe


def test_doctor_json_no_probe(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any) -> None:
        raise AssertionError("--no-probe must not boot anything")

    monkeypatch.setattr(probe, "_run_probe", never)
    code = main(["doctor", "--json", "--no-probe"])
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert code == (0 if report["runtime_ok"] else 1)
    assert err == ""
    assert report["backend"]["selected"] in {"firecracker", "qemu-kvm", "qemu-tcg", None}
    assert isinstance(report["issues"], list)
    assert report["boot_probes"]["skipped"].startswith("no guest kernel yet")


def fake_report(runtime_ok: bool) -> dict[str, Any]:
    return {
        "platform": "linux-x86_64",
        "kvm": {
            "exists": True,
            "readable": True,
            "writable": True,
            "hypervisor": "kvm_pvm",
            "usable": False,
            "reason": "boot probe failed",
        },
        "qemu": {"path": "/usr/bin/qemu-system-x86_64", "version": "7.2.0"},
        "firecracker": {"path": None, "version": None, "source": None},
        "boot_probes": {
            "kvm": {"ok": False, "seconds": 8.0, "reason": "too slow"},
            "tcg": {"ok": True, "seconds": 4.2, "reason": "reached user space"},
            "skipped": None,
        },
        "backend": {"selected": "qemu-tcg" if runtime_ok else None, "reason": "because"},
        "image_build": {"tools": {"mmdebstrap": "/usr/bin/mmdebstrap", "lz4": None}},
        "directories": {
            "state": {"path": "/s", "mode": "0o700", "writable": True, "free_bytes": 5 << 30},
            "cache": {"path": "/c", "mode": None, "writable": False, "free_bytes": 5 << 30},
        },
        "networking": {
            "ok": False,
            "problems": ["`nft` is missing"],
            "tun_available": True,
            "nft_binary": None,
            "host_ip_forward": False,
        },
        "environments": [{"name": "debian:12", "installed": True}],
        "issues": ["`lz4` is missing (unpacks Debian's cloud kernel): apt-get install -y lz4"],
        "runtime_ok": runtime_ok,
    }


@pytest.mark.parametrize("runtime_ok", [True, False])
def test_doctor_human(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, runtime_ok: bool
) -> None:
    monkeypatch.setattr(doctor, "doctor_report", lambda service, probe: fake_report(runtime_ok))
    code = main(["doctor"])
    out, _ = capsys.readouterr()
    assert code == (0 if runtime_ok else 1)
    assert "Platform: linux-x86_64" in out
    assert f"Backend: {'qemu-tcg' if runtime_ok else 'NONE'} (because)" in out
    assert "usable for a stock guest kernel: no (boot probe failed)" in out
    assert "boot probe kvm: FAILED in 8.0 s (too slow)" in out
    assert "boot probe tcg: ok in 4.2 s" in out
    assert "Firecracker: not installed" in out
    assert "lz4=MISSING" in out
    assert "Environments installed: debian:12" in out
    assert "- `lz4` is missing (unpacks Debian's cloud kernel): apt-get install -y lz4" in out


def test_doctor_probe_flag_reaches_the_report(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    def report(service: Any, probe: bool) -> dict[str, Any]:
        seen.append(probe)
        return fake_report(True)

    monkeypatch.setattr(doctor, "doctor_report", report)
    main(["doctor", "--json"])
    main(["doctor", "--json", "--no-probe"])
    capsys.readouterr()
    assert seen == [True, False]
