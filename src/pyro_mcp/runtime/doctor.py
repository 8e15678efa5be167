"""`pyro doctor`: what this host can run, which backend `auto` picks, and how to fix the rest.

Every check catches its own failure and turns it into an issue with the command that fixes
it, so the doctor works on exactly the hosts that need it most: the broken ones.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from pyro_mcp import paths
from pyro_mcp.environments import catalog
from pyro_mcp.environments.service import EnvironmentService
from pyro_mcp.errors import IntegrityError, PyroError
from pyro_mcp.host import tools
from pyro_mcp.runtime import probe

KVM_DEVICE = Path("/dev/kvm")


def _kvm_device() -> dict[str, Any]:
    exists = KVM_DEVICE.exists()
    return {
        "path": str(KVM_DEVICE),
        "exists": exists,
        "readable": exists and os.access(KVM_DEVICE, os.R_OK),
        "writable": exists and os.access(KVM_DEVICE, os.W_OK),
        "hypervisor": _hypervisor_module(),
        "cpu_virtualization_flags": _cpu_has_virt_flags(),
    }


def _hypervisor_module() -> str | None:
    for name in ("kvm_intel", "kvm_amd", "kvm_pvm"):
        if Path("/sys/module", name).exists():
            return name
    return None


def _cpu_has_virt_flags() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"^flags\s*:.*\b(vmx|svm)\b", text, re.MULTILINE) is not None


def _qemu() -> dict[str, Any]:
    path = tools.QEMU.path()
    info: dict[str, Any] = {"path": path, "version": None, "install_hint": tools.QEMU.install_hint}
    info["qemu_img"] = tools.QEMU_IMG.path()  # workspace disks with snapshots need it
    if path:
        try:
            out = subprocess.run(
                [path, "--version"], capture_output=True, text=True, check=False, timeout=30
            )
        except (OSError, subprocess.SubprocessError) as exc:
            info["error"] = f"{path} --version failed: {exc}"
            return info
        match = re.search(r"version (\S+)", out.stdout)
        info["version"] = match.group(1) if match else None
    return info


def _firecracker() -> dict[str, Any]:
    from pyro_mcp.vmm.firecracker import locate as fcb

    info: dict[str, Any] = {"path": None, "version": None, "jailer": None, "source": None}
    info["install_hint"] = "pyro runtime install firecracker"
    try:
        found = fcb.find_firecracker()
        if found is not None:
            info.update(path=str(found.path), source=found.source, version=found.version())
            info["jailer"] = str(found.jailer) if found.jailer else None
    except PyroError as exc:
        info["error"] = str(exc)
    return info


def _directory(path: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(path), "exists": path.is_dir()}
    probe_at = path if path.is_dir() else next((p for p in path.parents if p.is_dir()), Path("/"))
    info["writable"] = os.access(probe_at, os.W_OK)
    info["mode"] = oct(stat.S_IMODE(path.stat().st_mode)) if path.is_dir() else None
    info["free_bytes"] = shutil.disk_usage(probe_at).free
    return info


def _networking() -> dict[str, Any]:
    from pyro_mcp.network.check import check

    return check()


def _image_build() -> dict[str, Any]:
    found = {t.command: t.path() for t in tools.IMAGE_BUILD_TOOLS}
    return {"tools": found, "root": os.geteuid() == 0, "ok": all(found.values())}


def _probes(
    env_service: EnvironmentService, qemu: dict[str, Any], kvm: dict[str, Any], run: bool
) -> dict[str, Any]:
    """Boot-probe the cached default kernel with KVM (and TCG), when both exist."""
    result: dict[str, Any] = {"kvm": None, "tcg": None, "skipped": None}
    manifest = env_service.store.manifest(catalog.get(catalog.DEFAULT_ENVIRONMENT))
    if not qemu["path"]:
        result["skipped"] = "QEMU is not installed"
        return result
    if manifest is None:
        default = catalog.DEFAULT_ENVIRONMENT
        result["skipped"] = f"no guest kernel yet: run `pyro env pull {default}`"
        return result
    found = env_service.store.artifact_paths(manifest)
    sha = str(manifest["artifacts"]["kernel"]["sha256"])
    if run:
        # A probe of a missing or damaged kernel would fail and be cached as "KVM unusable".
        try:
            for name in ("kernel", "initramfs"):
                env_service.store.blobs.verify(str(manifest["artifacts"][name]["sha256"]))
        except IntegrityError as exc:
            result["skipped"] = f"the cached guest kernel cannot be used: {exc}"
            return result
    for accel in ("kvm", "tcg"):
        if accel == "kvm" and not (kvm["readable"] and kvm["writable"]):
            continue
        outcome: probe.ProbeResult | None
        if run:
            outcome = probe.boot_probe(
                qemu["path"],
                probe.qemu_identity(qemu["path"]),
                accel,
                found["kernel"],
                found["initramfs"],
                sha,
            )
        else:
            outcome = probe.cached_probe(accel, sha, probe.qemu_identity(qemu["path"]))
        result[accel] = outcome.to_dict() if outcome else None
    return result


def _kvm_verdict(kvm: dict[str, Any], probes: dict[str, Any]) -> tuple[bool | None, str]:
    if not kvm["exists"]:
        return False, "/dev/kvm does not exist (no hardware virtualisation exposed to this host)"
    if not (kvm["readable"] and kvm["writable"]):
        return False, "/dev/kvm is not readable and writable by this user"
    if probes["kvm"] is not None:
        if probes["kvm"]["ok"]:
            return True, "a stock guest kernel boots under KVM"
        nested = " /dev/kvm is nested PVM (kvm_pvm)" if kvm["hypervisor"] == "kvm_pvm" else ""
        return False, f"boot probe failed: {probes['kvm']['reason']}.{nested}".rstrip(".")
    if kvm["hypervisor"] == "kvm_pvm":
        return False, (
            "/dev/kvm is nested PVM (kvm_pvm), which cannot run a stock guest kernel "
            "(not yet confirmed by a boot probe)"
        )
    return None, "not probed yet: " + (probes["skipped"] or "run `pyro doctor`")


def _backend(
    kvm_ok: bool | None, qemu: dict[str, Any], fc: dict[str, Any], probes: dict[str, Any]
) -> tuple[str | None, str]:
    if kvm_ok and fc["path"]:
        return "firecracker", "KVM runs a stock guest kernel and Firecracker is installed"
    if kvm_ok and qemu["path"]:
        return "qemu-kvm", "KVM runs a stock guest kernel; Firecracker is not installed"
    if kvm_ok is None and qemu["path"]:
        why = "decided by a KVM boot probe at the first VM start (no guest kernel pulled yet)"
        return "auto", why
    if qemu["path"]:
        tcg = probes.get("tcg")
        if tcg is not None and not tcg["ok"]:
            return None, f"QEMU with TCG could not boot the guest either: {tcg['reason']}"
        why = "KVM cannot run a stock guest kernel here, so QEMU emulates the CPU (TCG)"
        return "qemu-tcg", why
    return None, "neither a usable KVM with Firecracker nor QEMU is available"


def _issues(report: dict[str, Any]) -> list[str]:
    issues = []
    if not report["qemu"]["path"]:
        issues.append(f"QEMU is missing: {report['qemu']['install_hint']}")
    if report["kvm"]["usable"] is False:
        issues.append(f"KVM unusable: {report['kvm']['reason']}")
    if report["qemu"].get("error"):
        issues.append(f"QEMU does not run: {report['qemu']['error']}")
    if report["qemu"]["path"] and not report["qemu"].get("qemu_img"):
        issues.append(
            f"`qemu-img` is missing ({tools.QEMU_IMG.purpose}): {tools.QEMU_IMG.install_hint}"
        )
    if report["firecracker"].get("error"):
        issues.append(f"Firecracker: {report['firecracker']['error']}")
    elif report["kvm"]["usable"] and not report["firecracker"]["path"]:
        hint = report["firecracker"]["install_hint"]
        issues.append(f"Firecracker is not installed, so QEMU with KVM is used: {hint}")
    for name, path in report["image_build"]["tools"].items():
        if path is None:
            tool = next(t for t in tools.IMAGE_BUILD_TOOLS if t.command == name)
            issues.append(f"`{name}` is missing ({tool.purpose}): {tool.install_hint}")
    for problem in report["networking"]["problems"]:
        issues.append(f"guest networking unavailable: {problem}")
    if not report["image_build"]["root"]:
        issues.append("environment builds need root: run `pyro env pull` with sudo")
    for key in ("state", "cache"):
        if not report["directories"][key]["writable"]:
            issues.append(f"{key} directory {report['directories'][key]['path']} is not writable")
    if report["disk"]["cache_free_bytes"] < 2 << 30:
        issues.append("less than 2 GiB free in the cache directory; environments need ~1 GiB")
    return issues


def doctor_report(env_service: EnvironmentService, *, probe: bool = True) -> dict[str, Any]:
    """The full host report; `probe=False` uses only cached boot probes (fast)."""
    kvm = _kvm_device()
    qemu = _qemu()
    fc = _firecracker()
    probes = _probes(env_service, qemu, kvm, probe)
    kvm["usable"], kvm["reason"] = _kvm_verdict(kvm, probes)
    backend, why = _backend(kvm["usable"], qemu, fc, probes)
    dirs = {"state": _directory(paths.state_dir()), "cache": _directory(env_service.store.root)}
    report: dict[str, Any] = {
        "platform": f"{platform.system().lower()}-{platform.machine()}",
        "kvm": kvm,
        "qemu": qemu,
        "firecracker": fc,
        "boot_probes": probes,
        "backend": {"selected": backend, "reason": why},
        "image_build": _image_build(),
        "directories": dirs,
        "disk": {"cache_free_bytes": dirs["cache"]["free_bytes"]},
        "networking": _networking(),
        "environments": [
            {"name": e["name"], "installed": e["installed"]} for e in env_service.list()
        ],
    }
    report["issues"] = _issues(report)
    report["runtime_ok"] = backend is not None
    return report
