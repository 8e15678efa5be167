"""QEMU backend: `-M microvm`, KVM when the boot probe passes, else TCG (software CPU).

This host has no vhost-vsock, so the agent channel is a virtio-serial port whose host side is
a UNIX socket (QEMU listens; the supervisor connects). Socket paths are relative to the VM
directory, which is QEMU's working directory, to stay clear of the 108-byte limit.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

from pyro_mcp.errors import PyroTimeoutError, VmmError
from pyro_mcp.host import tools
from pyro_mcp.host.unix import connect_when_ready
from pyro_mcp.protocol.frames import SERIAL_PORT_NAME
from pyro_mcp.vmm import qcow2
from pyro_mcp.vmm.base import Snapshot, VmSpec, spawn_vmm
from pyro_mcp.vmm.boot_args import boot_args
from pyro_mcp.vmm.qmp import Qmp

AGENT_SOCKET = "agent.sock"
QMP_SOCKET = "qmp.sock"
SNAPSHOT_TIMEOUT_S = 60.0


class QemuBackend:
    name = "qemu"
    can_suspend = True

    def __init__(self, accel: str = "tcg", binary: str | None = None) -> None:
        if accel not in ("kvm", "tcg"):
            raise ValueError(f"unknown QEMU accelerator {accel!r}")
        self.accel = accel
        self.binary = binary or tools.require(tools.QEMU)[tools.QEMU.command]

    @property
    def execution_mode(self) -> str:
        return f"qemu-{self.accel}"

    def command(
        self, spec: VmSpec, memory: Path | None = None, *, restore: bool = False
    ) -> list[str]:
        """The QEMU argv; `memory` keeps guest RAM in that file (shared for a template,
        copy-on-write for a restore), and `restore` waits for a snapshot instead of booting."""
        extra = ["pyro.transport=serial", f"pyro.hostname={spec.hostname}"]
        drives = [
            "-drive", f"id=root,file={spec.rootfs},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=root",
        ]  # fmt: skip
        letters = iter("bcd")  # vda is the root image; the others in command-line order
        if spec.rw_disk is not None:
            extra.append(f"pyro.rw=/dev/vd{next(letters)}")
            drives += _drive("rw", spec.rw_disk, "cache=unsafe")
        if spec.inspect_disk is not None:
            extra.append(f"pyro.inspect=/dev/vd{next(letters)}")
            drives += _drive("inspect", spec.inspect_disk, "cache=unsafe")
        if spec.output_disk is not None:
            next(letters)
            drives += _drive("out", spec.output_disk, "cache=unsafe")
        nic: list[str] = []
        if spec.nic is not None:
            extra.append(spec.nic.boot_arg())
            nic = [
                "-netdev", f"tap,id=net0,fd={spec.nic.tap_fd},vhost=off",
                "-device", f"virtio-net-device,netdev=net0,mac={spec.nic.mac}",
            ]  # fmt: skip
        # Guest RAM is always the backend `mem`, so the migration stream of any VM (its RAM
        # block named after it) loads into any other: a suspended workspace resumes with
        # plain RAM whether it was restored from a template file or cold booted.
        machine = "microvm,x-option-roms=off,rtc=off,isa-serial=on,memory-backend=mem"
        ram = ["-object", f"memory-backend-ram,id=mem,size={spec.mem_mib}M"]
        if memory is not None:
            share = "off" if restore else "on"
            ram = ["-object", f"memory-backend-file,id=mem,size={spec.mem_mib}M,"
                              f"mem-path={memory},share={share}"]  # fmt: skip
        # A restored guest is already past its boot: no kernel to load, saving memory too.
        boot = ["-incoming", "defer"] if restore else [
            "-kernel", str(spec.kernel), "-initrd", str(spec.initramfs),
            "-append", boot_args(self.accel, *extra),
        ]  # fmt: skip
        return [
            self.binary,
            "-M", machine, *ram,
            "-accel", self.accel, "-cpu", "host" if self.accel == "kvm" else "max",
            "-m", f"{spec.mem_mib}M", "-smp", str(spec.vcpu_count),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "stdio",
            *boot,
            *drives,
            *nic,
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=agent,path={AGENT_SOCKET},server=on,wait=off",
            "-device", f"virtserialport,chardev=agent,name={SERIAL_PORT_NAME}",
            "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
        ]  # fmt: skip

    def launch(self, spec: VmSpec, console_log: Path) -> subprocess.Popen[bytes]:
        return spawn_vmm(self.command(spec), spec.vm_dir, console_log, _inherited(spec))

    def launch_template(
        self, spec: VmSpec, console_log: Path, memory: Path
    ) -> subprocess.Popen[bytes]:
        return spawn_vmm(self.command(spec, memory), spec.vm_dir, console_log, _inherited(spec))

    def suspend(self, spec: VmSpec, state: Path) -> None:
        """Pause the VM, then write all of it (RAM included) to `state`: one pass over a
        frozen guest, so no page written during the copy can be missed. It stays paused."""
        self.save_snapshot(spec, state, pause=True)

    def save_snapshot(self, spec: VmSpec, state: Path, *, pause: bool = False) -> None:
        """Write the device state of the running VM, and its RAM unless that is shared.

        A template's RAM lives in a shared file: `x-ignore-shared` leaves it out of the
        stream, so the state file is tens of kilobytes whatever the guest's memory size. Any
        other VM's RAM goes into the stream (zero pages as markers only), unthrottled. The
        guest keeps running until the migration completes (QEMU drains disk I/O and pauses it
        then), so the restored copy carries a running run-state and starts by itself.
        """
        qmp = Qmp.connect(spec.vm_dir / QMP_SOCKET, timeout=10.0)
        try:
            qmp.execute("qmp_capabilities")
            qmp.execute("migrate-set-capabilities", _IGNORE_SHARED)
            qmp.execute("migrate-set-parameters", {"max-bandwidth": _UNTHROTTLED})
            if pause:
                qmp.execute("stop")
            qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(state))}"})
            _wait_migration(qmp)
        finally:
            qmp.close()

    def restore(
        self, spec: VmSpec, console_log: Path, snapshot: Snapshot
    ) -> subprocess.Popen[bytes]:
        """Map the template RAM privately (or, without a memory file, start with plain RAM)
        and load the state, RAM too if it has it, from an inherited fd.

        The three QMP commands go out back to back; the guest runs as soon as the state
        has loaded (well under a millisecond with `x-ignore-shared`).
        """
        return self._incoming(self.command(spec, snapshot.memory, restore=True), spec,
                              console_log, snapshot.state)  # fmt: skip

    def resume(self, spec: VmSpec, console_log: Path, state: Path) -> subprocess.Popen[bytes]:
        """Plain RAM, filled from the state file with the devices; the VM was paused when
        it was written (suspend), so it runs once the load has completed."""
        argv = self.command(spec, restore=True)
        return self._incoming(argv, spec, console_log, state, cont=True)

    def _incoming(
        self, argv: list[str], spec: VmSpec, console_log: Path, state: Path, *, cont: bool = False
    ) -> subprocess.Popen[bytes]:
        fd = os.open(state, os.O_RDONLY)
        try:
            proc = spawn_vmm(argv, spec.vm_dir, console_log, (fd, *_inherited(spec)))
        finally:
            os.close(fd)
        qmp = Qmp.connect(spec.vm_dir / QMP_SOCKET, timeout=10.0)
        try:
            qmp.send("qmp_capabilities")
            qmp.send("migrate-set-capabilities", _IGNORE_SHARED)
            qmp.send("migrate-incoming", {"uri": f"fd:{fd}"})
            for _ in range(3):
                qmp.result()
            if cont:
                _wait_migration(qmp)
                qmp.execute("cont")
        finally:
            qmp.close()
        return proc

    def disk_snapshot(self, spec: VmSpec, name: str, *, delete: bool = False) -> None:
        """Take (or delete) snapshot `name` inside the running VM's qcow2 disk. The guest is
        paused for the take only, so the snapshot is one instant of the disk."""
        if spec.rw_disk is None or spec.rw_disk.suffix != qcow2.SUFFIX:
            raise VmmError("this VM's disk is not a qcow2 image: it takes no snapshots")
        qmp = Qmp.connect(spec.vm_dir / QMP_SOCKET, timeout=10.0)
        try:
            qmp.execute("qmp_capabilities")
            args = {"device": "rw", "name": name}
            if delete:
                qmp.execute("blockdev-snapshot-delete-internal-sync", args)
                return
            qmp.execute("stop")
            try:
                qmp.execute("blockdev-snapshot-internal-sync", args)
            finally:
                qmp.execute("cont")
        finally:
            qmp.close()

    def connect_agent(self, spec: VmSpec, timeout: float) -> socket.socket:
        """Connect to the virtio-serial socket once QEMU has created it."""
        path = spec.vm_dir / AGENT_SOCKET
        return connect_when_ready(path, timeout, "QEMU did not open the agent socket")


def _drive(name: str, path: Path, options: str) -> list[str]:
    fmt = "qcow2" if path.suffix == qcow2.SUFFIX else "raw"
    return [
        "-drive", f"id={name},file={path},format={fmt},if=none,{options}",
        "-device", f"virtio-blk-device,drive={name}",
    ]  # fmt: skip


def _inherited(spec: VmSpec) -> tuple[int, ...]:
    """The fds QEMU must inherit: the TAP it is given by number."""
    if spec.nic is not None and spec.nic.tap_fd is not None:
        return (spec.nic.tap_fd,)
    return ()


_IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}
_UNTHROTTLED = 1 << 40  # bytes/s: QEMU's default would cap a RAM stream at 128 MiB/s


def _wait_migration(qmp: Qmp) -> None:
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT_S
    while time.monotonic() < deadline:
        status = (qmp.execute("query-migrate") or {}).get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise VmmError(f"QEMU could not write the snapshot (migration {status})")
        time.sleep(0.002)
    raise PyroTimeoutError("QEMU did not finish writing the snapshot")
