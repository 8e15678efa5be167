"""QEMU backend: `-M microvm`, KVM when the boot probe passes, else TCG (software CPU).

This host has no vhost-vsock, so the agent channel is a virtio-serial port whose host side is
a UNIX socket (QEMU listens; the supervisor connects). Socket paths are relative to the VM
directory, which is QEMU's working directory, to stay clear of the 108-byte limit.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from pyro_mcp.errors import PyroTimeoutError
from pyro_mcp.guest.protocol import SERIAL_PORT_NAME
from pyro_mcp.host import tools
from pyro_mcp.vmm.base import VmSpec, spawn_vmm
from pyro_mcp.vmm.boot_args import boot_args

AGENT_SOCKET = "agent.sock"
QMP_SOCKET = "qmp.sock"


class QemuBackend:
    name = "qemu"

    def __init__(self, accel: str = "tcg", binary: str | None = None) -> None:
        if accel not in ("kvm", "tcg"):
            raise ValueError(f"unknown QEMU accelerator {accel!r}")
        self.accel = accel
        self.binary = binary or tools.require(tools.QEMU)[tools.QEMU.command]

    @property
    def execution_mode(self) -> str:
        return f"qemu-{self.accel}"

    def command(self, spec: VmSpec) -> list[str]:
        extra = ["pyro.transport=serial", f"pyro.hostname={spec.hostname}"]
        drives = [
            "-drive", f"id=root,file={spec.rootfs},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=root",
        ]  # fmt: skip
        if spec.rw_disk is not None:
            extra.append("pyro.rw=/dev/vdb")
            drives += [
                "-drive", f"id=rw,file={spec.rw_disk},format=raw,if=none,cache=unsafe",
                "-device", "virtio-blk-device,drive=rw",
            ]  # fmt: skip
        return [
            self.binary,
            "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on",
            "-accel", self.accel, "-cpu", "host" if self.accel == "kvm" else "max",
            "-m", f"{spec.mem_mib}M", "-smp", str(spec.vcpu_count),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "stdio",
            "-kernel", str(spec.kernel), "-initrd", str(spec.initramfs),
            "-append", boot_args(self.accel, *extra),
            *drives,
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=agent,path={AGENT_SOCKET},server=on,wait=off",
            "-device", f"virtserialport,chardev=agent,name={SERIAL_PORT_NAME}",
            "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
        ]  # fmt: skip

    def launch(self, spec: VmSpec, console_log: Path) -> subprocess.Popen[bytes]:
        return spawn_vmm(self.command(spec), spec.vm_dir, console_log)

    def connect_agent(self, spec: VmSpec, timeout: float) -> socket.socket:
        """Connect to the virtio-serial socket once QEMU has created it."""
        path = spec.vm_dir / AGENT_SOCKET
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() >= deadline:
                    raise PyroTimeoutError(
                        f"QEMU did not open the agent socket {path} within {timeout:.0f} s"
                    ) from None
                time.sleep(0.005)
