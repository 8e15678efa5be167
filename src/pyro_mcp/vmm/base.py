"""The one small interface every VMM backend implements: launch a VM and reach its agent.

A backend turns a `VmSpec` into a running VMM process (a child of the VM's supervisor) and
knows how to open a raw byte stream to the guest agent. Everything above (multiplexing,
TTL, cleanup) is backend-independent and lives in the supervisor.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class GuestNic:
    """The guest's one NIC: a TAP in the VM's network namespace (see pyro_mcp.network)."""

    tap_name: str
    mac: str
    address: str  # the guest's, with its prefix (CIDR notation)
    gateway: str
    tap_fd: int | None = None  # QEMU takes the open TAP, inherited
    netns_fd: int | None = None  # Firecracker runs in the namespace and opens the TAP by name

    def boot_arg(self) -> str:
        """What the guest init reads to configure the NIC on a cold boot."""
        return f"pyro.net={self.address},{self.gateway}"


@dataclass(frozen=True)
class VmSpec:
    """Everything needed to boot one VM; all of its files live in `vm_dir` (mode 0700)."""

    vm_id: str
    vm_dir: Path
    kernel: Path
    initramfs: Path
    rootfs: Path
    vcpu_count: int
    mem_mib: int
    hostname: str
    rw_disk: Path | None = None  # None: the guest keeps its writable layer in RAM
    nic: GuestNic | None = None  # None: no network device at all
    # A helper VM for the disk tools: an overlay over another VM's writable disk (that disk
    # itself is only read), and an empty raw image it may write (an export).
    inspect_disk: Path | None = None
    output_disk: Path | None = None


@dataclass(frozen=True)
class Snapshot:
    """A VM frozen at agent-ready: guest RAM in one file, device state in another."""

    memory: Path
    state: Path
    disk: Path | None = None  # the template's writable disk; each VM gets a sparse copy


class Backend(Protocol):
    name: str  # "qemu" or "firecracker"
    accel: str  # "kvm" or "tcg"

    @property
    def execution_mode(self) -> str: ...

    def launch(self, spec: VmSpec, console_log: Path) -> subprocess.Popen[bytes]:
        """Start the VMM for `spec`; it must die when the calling process dies."""
        ...

    def connect_agent(self, spec: VmSpec, timeout: float) -> socket.socket:
        """A connected stream to the guest agent (the handshake is the caller's)."""
        ...

    def launch_template(
        self, spec: VmSpec, console_log: Path, memory: Path
    ) -> subprocess.Popen[bytes]:
        """Cold boot with guest RAM kept in the file `memory`, ready to be snapshotted."""
        ...

    def save_snapshot(self, spec: VmSpec, state: Path) -> None:
        """Freeze a template VM (its agent connection closed) and write its device state."""
        ...

    def restore(
        self, spec: VmSpec, console_log: Path, snapshot: Snapshot
    ) -> subprocess.Popen[bytes]:
        """A new VMM process running the snapshot, guest RAM mapped copy-on-write."""
        ...

    # Suspending: write a running VM (RAM and devices) to one file, paused; resume runs that
    # file again. Only backends with can_suspend do this.
    can_suspend: bool

    def suspend(self, spec: VmSpec, state: Path) -> None:
        """Pause the VM and write all of it to `state`."""
        ...

    def resume(self, spec: VmSpec, console_log: Path, state: Path) -> subprocess.Popen[bytes]:
        """A new VMM process running a suspended VM's state file (RAM included)."""
        ...

    def disk_snapshot(self, spec: VmSpec, name: str, *, delete: bool = False) -> None:
        """Take (or delete) a copy-on-write snapshot of the running VM's writable disk."""
        ...


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel kills the VMM the moment its supervisor dies, however
    # the supervisor dies, so a VM can never outlive the process that accounts for it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def _in_namespace(netns_fd: int) -> Callable[[], None]:
    def enter() -> None:
        _die_with_parent()
        os.setns(netns_fd, os.CLONE_NEWNET)

    return enter


def spawn_vmm(
    argv: list[str],
    cwd: Path,
    console_log: Path,
    pass_fds: tuple[int, ...] = (),
    netns_fd: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start a VMM process bound to our lifetime, console output to `console_log`; with
    `netns_fd`, inside that network namespace (a VMM that opens its TAP by name)."""
    with console_log.open("ab") as log:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            preexec_fn=_die_with_parent if netns_fd is None else _in_namespace(netns_fd),
        )
