"""Which VMM runs a VM: `auto` follows the cached KVM boot probe, `PYRO_BACKEND` forces one.

auto: Firecracker when KVM can run our kernel and Firecracker is installed, then QEMU with
KVM, then QEMU with TCG. The probe costs a few seconds once per host, QEMU version and kernel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyro_mcp.environments.service import InstalledEnvironment
from pyro_mcp.errors import HostRequirementError, InvalidArgumentError
from pyro_mcp.host import tools
from pyro_mcp.runtime import probe

BACKEND_ENV = "PYRO_BACKEND"
CHOICES = ("auto", "qemu", "qemu-kvm", "qemu-tcg", "firecracker")


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "qemu" or "firecracker"
    accel: str  # "kvm" or "tcg"
    reason: str

    @property
    def execution_mode(self) -> str:
        return f"{self.name}-{self.accel}"


def _kvm_works(env: InstalledEnvironment) -> tuple[bool, str]:
    if not (os.access("/dev/kvm", os.R_OK | os.W_OK)):
        return False, "/dev/kvm is missing or not accessible"
    qemu = tools.QEMU.path()
    if qemu is None:
        return False, "QEMU is needed to probe KVM"
    sha = str(env.manifest["artifacts"]["kernel"]["sha256"])
    result = probe.boot_probe(
        qemu, probe.qemu_identity(qemu), "kvm", env.kernel, env.initramfs, sha
    )
    return result.ok, result.reason


def _firecracker_installed() -> bool:
    from pyro_mcp.vmm.firecracker.locate import find_firecracker

    return find_firecracker() is not None


def choose(env: InstalledEnvironment, requested: str | None = None) -> BackendChoice:
    """The backend for a VM of `env`; raises when the requested one cannot run here."""
    wanted = (requested or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
    if wanted not in CHOICES:
        raise InvalidArgumentError(
            f"unknown backend {wanted!r}", hint=f"use one of: {', '.join(CHOICES)}"
        )
    if wanted == "qemu-tcg":
        tools.require(tools.QEMU)
        return BackendChoice("qemu", "tcg", "forced: QEMU with TCG")
    kvm_ok, why = _kvm_works(env)
    if wanted in ("firecracker", "qemu-kvm") and not kvm_ok:
        raise HostRequirementError(
            f"backend {wanted} needs a KVM that runs a stock guest kernel: {why}",
            hint=f"use {BACKEND_ENV}=qemu-tcg (software CPU) or run on a host with hardware KVM",
        )
    if wanted == "firecracker":
        return BackendChoice("firecracker", "kvm", "forced: Firecracker")
    if kvm_ok and wanted == "auto" and _firecracker_installed():
        return BackendChoice("firecracker", "kvm", "KVM works and Firecracker is installed")
    tools.require(tools.QEMU)
    if kvm_ok:
        return BackendChoice("qemu", "kvm", "KVM works; QEMU with KVM")
    return BackendChoice("qemu", "tcg", f"KVM cannot run the guest ({why}); QEMU with TCG")
