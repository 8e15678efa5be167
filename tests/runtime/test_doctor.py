"""`pyro doctor`: it never crashes on a host missing pieces, names fixes, and picks a backend."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.environments import catalog
from pyro_mcp.environments.service import EnvironmentService
from pyro_mcp.environments.store import MANIFEST_SCHEMA, EnvironmentStore
from pyro_mcp.host import tools
from pyro_mcp.runtime import doctor, probe
from pyro_mcp.vmm.firecracker import locate as firecracker_binary

BACKENDS = {"firecracker", "qemu-kvm", "qemu-tcg", "auto", None}
REAL_FIND_FIRECRACKER = firecracker_binary.find_firecracker


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


class Host:
    """A made-up host: each piece can be present, missing or broken."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp_path
        self.mp = monkeypatch
        self.service = EnvironmentService(EnvironmentStore(tmp_path / "cache" / "environments"))
        self.probe_ok = {"kvm": True, "tcg": True}
        self.probed: list[str] = []
        self.hidden: set[str] = set()
        self.kvm(present=True)
        self.hypervisor("kvm_intel")
        self.qemu(present=True)
        self.firecracker(present=False)
        real_which = tools.shutil.which

        def which(command: str, *args: Any, **kwargs: Any) -> str | None:
            return None if command in self.hidden else real_which(command, *args, **kwargs)

        monkeypatch.setattr(tools.shutil, "which", which)

        def run_probe(command: list[str], deadline: float) -> tuple[bool, str]:
            accel = command[command.index("-accel") + 1]
            self.probed.append(accel)
            if self.probe_ok[accel]:
                return True, "the guest kernel reached user space"
            return False, f"the guest kernel did not reach user space within {deadline:.0f} s"

        monkeypatch.setattr(probe, "_run_probe", run_probe)

    def kvm(self, present: bool) -> None:
        device = self.tmp / ("dev-kvm" if present else "no-such-dev-kvm")
        if present:
            device.write_text("")
        self.mp.setattr(doctor, "KVM_DEVICE", device)

    def hypervisor(self, module: str | None) -> None:
        self.mp.setattr(doctor, "_hypervisor_module", lambda: module)

    def qemu(
        self, present: bool, body: str = 'echo "QEMU emulator version 7.2.0 (Debian)"'
    ) -> None:
        path = script(self.tmp / "bin" / "qemu-system-x86_64", body) if present else None
        command = str(path) if path else "pyro-test-no-such-qemu"
        self.mp.setattr(tools, "QEMU", tools.Tool(command, "qemu-system-x86", "runs VMs"))

    def firecracker(self, present: bool) -> None:
        if present:
            fc = script(self.tmp / "fc" / "firecracker", 'echo "Firecracker v1.12.1"')
            self.mp.setenv(firecracker_binary.BIN_ENV, str(fc))
            self.mp.setattr(firecracker_binary, "find_firecracker", REAL_FIND_FIRECRACKER)
        else:
            self.mp.delenv(firecracker_binary.BIN_ENV, raising=False)
            self.mp.setattr(firecracker_binary, "find_firecracker", lambda *a, **k: None)

    def install_kernel(self) -> dict[str, Any]:
        store = self.service.store
        env = catalog.get(catalog.DEFAULT_ENVIRONMENT)
        artifacts = {}
        for name in ("kernel", "initramfs", "rootfs"):
            source = store.root / f"new-{name}"
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(f"fake {name}".encode())
            digest, size = store.blobs.add(source)
            artifacts[name] = {"sha256": digest, "size": size, "file": name}
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "name": env.name,
            "version": env.version,
            "packages": [],
            "artifacts": artifacts,
        }
        store.write_manifest(env, manifest)
        return manifest

    def report(self, run: bool = True) -> dict[str, Any]:
        report = doctor.doctor_report(self.service, probe=run)
        json.dumps(report)  # what `pyro doctor --json` prints
        return report


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    return Host(tmp_path, monkeypatch)


def test_report_has_every_section(host: Host) -> None:
    report = host.report(run=False)
    assert set(report) >= {
        "platform",
        "kvm",
        "qemu",
        "firecracker",
        "boot_probes",
        "backend",
        "image_build",
        "directories",
        "disk",
        "networking",
        "environments",
        "issues",
        "runtime_ok",
    }
    assert report["platform"].startswith("linux-")
    assert report["qemu"]["version"] == "7.2.0"
    assert [e["name"] for e in report["environments"]] == catalog.names()
    assert set(report["directories"]) == {"state", "cache"}
    assert report["backend"]["selected"] in BACKENDS


# --- backend selection --------------------------------------------------------------------------


def test_kvm_that_boots_and_firecracker_select_firecracker(host: Host) -> None:
    host.install_kernel()
    host.firecracker(present=True)
    report = host.report()
    assert host.probed == ["kvm", "tcg"]
    assert report["kvm"]["usable"] is True
    assert report["firecracker"]["version"] == "1.12.1"
    assert report["backend"]["selected"] == "firecracker"
    assert report["runtime_ok"] is True
    assert not any("Firecracker" in issue for issue in report["issues"])


def test_kvm_that_boots_without_firecracker_selects_qemu_kvm(host: Host) -> None:
    host.install_kernel()
    report = host.report()
    assert report["backend"]["selected"] == "qemu-kvm"
    assert report["runtime_ok"] is True
    assert any("pyro runtime install firecracker" in issue for issue in report["issues"])


def test_kvm_that_cannot_boot_a_stock_kernel_falls_back_to_tcg(host: Host) -> None:
    host.install_kernel()
    host.hypervisor("kvm_pvm")
    host.firecracker(present=True)
    host.probe_ok["kvm"] = False
    report = host.report()
    assert report["kvm"]["exists"] is True
    assert report["kvm"]["usable"] is False
    assert "boot probe failed" in report["kvm"]["reason"]
    assert "kvm_pvm" in report["kvm"]["reason"]
    assert report["boot_probes"]["kvm"]["ok"] is False
    assert report["boot_probes"]["tcg"]["ok"] is True
    assert report["backend"]["selected"] == "qemu-tcg"
    assert report["runtime_ok"] is True
    assert any(issue.startswith("KVM unusable") for issue in report["issues"])


def test_nested_pvm_is_called_unusable_even_before_a_probe(host: Host) -> None:
    host.hypervisor("kvm_pvm")
    report = host.report()  # no kernel installed yet: nothing to probe
    assert host.probed == []
    assert report["kvm"]["usable"] is False
    assert "not yet confirmed" in report["kvm"]["reason"]
    assert report["backend"]["selected"] == "qemu-tcg"


def test_tcg_that_cannot_boot_either_selects_nothing(host: Host) -> None:
    host.install_kernel()
    host.probe_ok = {"kvm": False, "tcg": False}
    report = host.report()
    assert report["backend"]["selected"] is None
    assert "TCG could not boot" in report["backend"]["reason"]
    assert report["runtime_ok"] is False


def test_nothing_usable_selects_nothing(host: Host) -> None:
    host.install_kernel()
    host.kvm(present=False)
    host.qemu(present=False)
    host.firecracker(present=True)
    report = host.report()
    assert host.probed == []
    assert report["kvm"]["exists"] is False
    assert report["kvm"]["usable"] is False
    assert report["qemu"]["path"] is None
    assert report["backend"]["selected"] is None
    assert report["runtime_ok"] is False
    assert "QEMU is missing: apt-get install -y qemu-system-x86" in report["issues"]
    assert report["boot_probes"]["skipped"] == "QEMU is not installed"


@pytest.mark.parametrize(
    ("kvm_ok", "qemu", "fc", "tcg_ok", "expected"),
    [
        (True, True, True, True, "firecracker"),
        (True, False, True, None, "firecracker"),
        (True, True, False, True, "qemu-kvm"),
        (False, True, True, True, "qemu-tcg"),
        (None, True, False, None, "auto"),  # never probed: the first VM start probes
        (False, True, False, False, None),
        (False, False, True, None, None),
        (True, False, False, None, None),
        (None, False, False, None, None),
    ],
)
def test_backend_table(
    kvm_ok: bool | None, qemu: bool, fc: bool, tcg_ok: bool | None, expected: str | None
) -> None:
    tcg = None if tcg_ok is None else {"ok": tcg_ok, "reason": "r"}
    selected, reason = doctor._backend(
        kvm_ok, {"path": "/q" if qemu else None}, {"path": "/f" if fc else None}, {"tcg": tcg}
    )
    assert selected == expected
    assert reason


# --- missing pieces never crash the doctor ------------------------------------------------------


def test_missing_kvm_device(host: Host) -> None:
    host.kvm(present=False)
    host.hypervisor(None)
    report = host.report()
    kvm = report["kvm"]
    assert (kvm["exists"], kvm["readable"], kvm["writable"]) == (False, False, False)
    assert "does not exist" in report["kvm"]["reason"]
    assert report["backend"]["selected"] == "qemu-tcg"


def test_a_kvm_device_without_access(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    host.install_kernel()
    device = str(doctor.KVM_DEVICE)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m, **k: False if str(p) == device else real_access(p, m, **k)
    )
    report = host.report()
    assert report["kvm"]["readable"] is False
    assert "not readable and writable" in report["kvm"]["reason"]
    assert host.probed == ["tcg"]  # no KVM probe on a device we cannot open


def test_missing_image_tools_are_named_with_their_packages(host: Host) -> None:
    host.hidden = {"mmdebstrap", "mke2fs", "lz4"}
    report = host.report(run=False)
    assert report["image_build"]["ok"] is False
    assert set(report["image_build"]["tools"].values()) == {None}
    issues = "\n".join(report["issues"])
    assert "`mmdebstrap` is missing" in issues and "apt-get install -y mmdebstrap" in issues
    assert "apt-get install -y e2fsprogs" in issues
    assert "apt-get install -y lz4" in issues


def test_missing_network_tools_are_named_with_their_packages(host: Host) -> None:
    host.hidden = {"nft"}
    report = host.report(run=False)
    assert report["networking"]["nft_binary"] is None
    assert report["networking"]["ok"] is False
    issues = "\n".join(report["issues"])
    assert "guest networking unavailable" in issues
    assert "apt-get install -y nftables" in issues


def test_a_broken_qemu_binary_does_not_crash(host: Host) -> None:
    path = host.tmp / "bin" / "qemu-broken"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x01 not an executable format")
    path.chmod(0o755)
    host.mp.setattr(tools, "QEMU", tools.Tool(str(path), "qemu-system-x86", "runs VMs"))
    report = host.report(run=False)
    assert report["qemu"]["version"] is None
    assert any("QEMU does not run" in issue for issue in report["issues"])


def test_a_bad_firecracker_override_is_reported(host: Host) -> None:
    host.firecracker(present=True)
    host.mp.setenv(firecracker_binary.BIN_ENV, str(host.tmp / "nowhere" / "firecracker"))
    report = host.report(run=False)
    assert report["firecracker"]["path"] is None
    assert "PYRO_FIRECRACKER_BIN" in report["firecracker"]["error"]
    assert any("PYRO_FIRECRACKER_BIN" in issue for issue in report["issues"])


def test_unwritable_directories_are_reported(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = host.service.store.root
    cache.mkdir(parents=True)
    real_access = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if mode == os.W_OK and Path(path) in {cache, *cache.parents}:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    report = host.report(run=False)
    assert report["directories"]["cache"]["writable"] is False
    assert report["directories"]["cache"]["mode"] == oct(stat.S_IMODE(cache.stat().st_mode))
    assert f"cache directory {cache} is not writable" in report["issues"]


def test_directories_that_do_not_exist_yet(host: Host) -> None:
    report = host.report(run=False)
    cache = report["directories"]["cache"]
    assert cache["exists"] is False
    assert cache["mode"] is None
    assert cache["writable"] is True  # its nearest existing parent is
    assert cache["free_bytes"] > 0


def test_an_unusable_state_and_cache_location_does_not_crash(
    host: Host, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_text("")
    monkeypatch.setenv("PYRO_STATE_DIR", str(blocker / "state"))
    monkeypatch.setenv("PYRO_CACHE_DIR", str(blocker / "cache"))
    host.install_kernel()
    report = host.report()  # the probe cache cannot be written: probing still works
    assert report["boot_probes"]["tcg"]["ok"] is True
    assert report["backend"]["selected"] == "qemu-kvm"


def test_no_kernel_yet_skips_the_probes_and_says_how_to_get_one(host: Host) -> None:
    report = host.report()
    assert host.probed == []
    assert report["boot_probes"]["skipped"] == "no guest kernel yet: run `pyro env pull debian:12`"
    assert report["kvm"]["usable"] is None
    assert report["kvm"]["reason"].startswith("not probed yet")


def test_a_damaged_kernel_is_not_probed(host: Host) -> None:
    manifest = host.install_kernel()
    kernel = host.service.store.blobs.path(manifest["artifacts"]["kernel"]["sha256"])
    kernel.chmod(0o644)
    kernel.write_bytes(b"truncated")
    report = host.report()
    assert host.probed == []
    assert "cannot be used" in report["boot_probes"]["skipped"]
    assert report["boot_probes"]["kvm"] is None


# --- probes: run or cached ------------------------------------------------------------------


def test_no_probe_uses_only_cached_results(host: Host) -> None:
    host.install_kernel()
    first = host.report(run=False)
    assert host.probed == []
    assert first["boot_probes"]["kvm"] is None and first["boot_probes"]["tcg"] is None
    host.probe_ok["kvm"] = False
    host.report(run=True)
    assert host.probed == ["kvm", "tcg"]
    cached = host.report(run=False)
    assert host.probed == ["kvm", "tcg"]
    assert cached["boot_probes"]["kvm"]["ok"] is False
    assert cached["kvm"]["usable"] is False
    assert cached["backend"]["selected"] == "qemu-tcg"
    host.report(run=True)  # a cached probe is not run again
    assert host.probed == ["kvm", "tcg"]
