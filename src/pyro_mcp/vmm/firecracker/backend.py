"""Firecracker backend: KVM only, configured through its HTTP API, the agent reached over vsock.

Firecracker starts empty and serves its API on `api.sock`; launch() sends the boot source,
drives, machine size and vsock device, then starts the instance (no config file is written).
The agent is reached through the vsock bridge: a UNIX socket where `CONNECT <port>` opens a
stream to that guest port. As root, Firecracker runs under the jailer (see `jail`), its
sockets in the chroot (`api_socket_path`, `agent_socket_path`). Warm start builds on
`snapshot`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen
from typing import Any

from pyro_mcp.agent_client.client import connect_firecracker_vsock_socket
from pyro_mcp.errors import HostRequirementError, PyroTimeoutError, VmmError
from pyro_mcp.host.unix import connect_unix, unix_address
from pyro_mcp.protocol.frames import AGENT_VSOCK_PORT
from pyro_mcp.vmm.base import Snapshot, VmSpec, spawn_vmm
from pyro_mcp.vmm.boot_args import boot_args
from pyro_mcp.vmm.firecracker.api import FirecrackerApi
from pyro_mcp.vmm.firecracker.jail import (
    JAILER_GID_ENV,
    JAILER_UID_ENV,
    jail_id_from_env,
    jail_layout,
    jail_root,
    jailer_command,
)
from pyro_mcp.vmm.firecracker.layout import API_SOCKET, VSOCK_SOCKET, GuestFiles, plain_layout
from pyro_mcp.vmm.firecracker.locate import BIN_ENV, find_firecracker
from pyro_mcp.vmm.firecracker.snapshot import SNAPSHOT_TIMEOUT_S, create_snapshot, load_body

GUEST_CID = 3  # 0-2 are reserved; every VM has its own bridge, so all guests can use 3
KVM_DEVICE = Path("/dev/kvm")
API_WAIT_S = 5.0
INSTALL_HINT = "pyro runtime install firecracker"
_JAILER_HINT = f"run pyro as root with the jailer installed (`{INSTALL_HINT}`), or go without it"

_ATTEMPT_S = 0.5
_RETRY_PAUSE_S = 0.02
_CONSOLE_TAIL_BYTES = 2000


class FirecrackerBackend:
    """The Backend for Firecracker: boots, snapshots and restores VMs, jailed when root."""

    name = "firecracker"
    accel = "kvm"
    # Its snapshots write guest RAM to a file beside the state, which a workspace's stop
    # does not keep yet: a stopped workspace starts with a cold boot on this backend.
    can_suspend = False

    def __init__(
        self, binary: Path | None = None, jailer: Path | None = None, use_jailer: bool | None = None
    ) -> None:
        if binary is None:
            found = find_firecracker()
            if found is None:
                raise HostRequirementError(
                    "Firecracker is not installed",
                    hint=f"run `{INSTALL_HINT}`, or point {BIN_ENV} at a firecracker binary",
                )
            binary, jailer = found.path, jailer or found.jailer
        elif jailer is None and os.access(binary.parent / "jailer", os.X_OK):
            jailer = binary.parent / "jailer"
        if use_jailer is None:
            use_jailer = os.geteuid() == 0 and jailer is not None
        if use_jailer and (os.geteuid() != 0 or jailer is None):
            why = "needs root" if os.geteuid() != 0 else "is not installed"
            raise HostRequirementError(f"the Firecracker jailer {why}", hint=_JAILER_HINT)
        self.binary = binary
        self.jailer = jailer if use_jailer else None
        # The ids the VMM runs as: the jail's, or ours when there is no jailer.
        self.uid = jail_id_from_env(JAILER_UID_ENV) if use_jailer else os.geteuid()
        self.gid = jail_id_from_env(JAILER_GID_ENV) if use_jailer else os.getegid()
        # Template VM directory -> where save_snapshot() is to put the guest RAM.
        self.template_memory: dict[Path, Path] = {}

    @property
    def execution_mode(self) -> str:
        return "firecracker-kvm"

    def jail_root(self, spec: VmSpec) -> Path:
        """The jailer's chroot for `spec` (whether or not this backend uses the jailer)."""
        return jail_root(spec, self.binary)

    def vmm_root(self, spec: VmSpec) -> Path:
        """Firecracker's working directory, where its relative paths and sockets land."""
        return self.jail_root(spec) if self.jailer is not None else spec.vm_dir

    def api_socket_path(self, spec: VmSpec) -> Path:
        return self.vmm_root(spec) / API_SOCKET

    def agent_socket_path(self, spec: VmSpec) -> Path:
        """The vsock bridge's UNIX socket (write `CONNECT <port>` to reach a guest port)."""
        return self.vmm_root(spec) / VSOCK_SOCKET

    def command(self, spec: VmSpec) -> list[str]:
        """The argv to run with the VM directory as working directory."""
        if self.jailer is None:
            return [str(self.binary), "--api-sock", API_SOCKET]
        return jailer_command(self.jailer, self.binary, spec, self.uid, self.gid)

    def prepare(self, spec: VmSpec, *, portable: bool = False) -> GuestFiles:
        """Clear what an earlier run of this VM left and lay out its files for Firecracker.

        `portable` names the disks relative to Firecracker's working directory, as a snapshot
        needs (see layout.plain_layout); paths in the jail are always so.
        """
        if self.jailer is not None:
            return jail_layout(spec, self.binary, self.uid, self.gid)
        return plain_layout(spec, portable=portable)

    def configure(self, api: FirecrackerApi, spec: VmSpec, files: GuestFiles) -> None:
        """Describe the VM to a fresh Firecracker and start it."""
        extra = ["pyro.transport=vsock", f"pyro.hostname={spec.hostname}"]
        if files.rw_disk is not None:
            extra.append("pyro.rw=/dev/vdb")
        if spec.nic is not None:
            extra.append(spec.nic.boot_arg())
        # Always our own boot args: Firecracker's default line has `nomodule`, which would stop
        # the initramfs from loading the virtio and vsock modules.
        kernel = {"kernel_image_path": files.kernel, "initrd_path": files.initrd}
        api.put("/boot-source", {**kernel, "boot_args": boot_args("kvm", *extra)})
        # Drives appear in the order they are added: the root image is vda, the writable vdb.
        api.put("/drives/root", _drive("root", files.rootfs, read_only=True))
        if files.rw_disk is not None:
            api.put("/drives/rw", _drive("rw", files.rw_disk, read_only=False))
        machine = {"vcpu_count": spec.vcpu_count, "mem_size_mib": spec.mem_mib, "smt": False}
        api.put("/machine-config", machine)
        api.put("/vsock", {"guest_cid": GUEST_CID, "uds_path": VSOCK_SOCKET})
        if spec.nic is not None:
            # Firecracker opens the TAP by name in its own network namespace: the VM's.
            nic = {
                "iface_id": "eth0",
                "guest_mac": spec.nic.mac,
                "host_dev_name": spec.nic.tap_name,
            }
            api.put("/network-interfaces/eth0", nic)
        api.put("/actions", {"action_type": "InstanceStart"})

    def launch(self, spec: VmSpec, console_log: Path) -> Popen[bytes]:
        """Start Firecracker, configure it and boot the guest; on failure, kill it and raise.

        With the jailer, the process returned is the PID-namespace helper (see jail).
        """
        if spec.inspect_disk is not None or spec.output_disk is not None:
            raise VmmError(
                "the Firecracker backend runs no helper VM for the disk tools yet",
                hint="run them with QEMU: PYRO_BACKEND=qemu",
            )
        return self._boot(spec, console_log, portable=False)

    def start(
        self, spec: VmSpec, console_log: Path, setup: Callable[[FirecrackerApi], None]
    ) -> Popen[bytes]:
        """Run Firecracker on the prepared VM directory and `setup` it through its API.

        On any failure the VMM is killed before the error propagates: no VM without an owner.
        """
        argv = self.command(spec)
        try:
            netns_fd = spec.nic.netns_fd if spec.nic is not None else None
            proc = spawn_vmm(argv, spec.vm_dir, console_log, netns_fd=netns_fd)
        except OSError as exc:
            raise HostRequirementError(
                f"cannot start {argv[0]}: {exc.strerror or exc}", hint=f"run `{INSTALL_HINT}`"
            ) from exc
        try:
            api_path = self.api_socket_path(spec)
            _wait_for_api(proc, api_path, console_log)
            setup(FirecrackerApi(api_path))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc

    def connect_agent(self, spec: VmSpec, timeout: float) -> socket.socket:
        """A stream to the guest agent's vsock port, retried until the guest listens."""
        path = self.agent_socket_path(spec)
        deadline = time.monotonic() + timeout
        last: OSError | None = None
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                with unix_address(path) as address:
                    attempt = min(_ATTEMPT_S, remaining)
                    sock = connect_firecracker_vsock_socket(address, AGENT_VSOCK_PORT, attempt)
                sock.settimeout(None)
                return sock
            except OSError as exc:  # no socket yet, or the guest has no listener yet
                last = exc
            time.sleep(min(_RETRY_PAUSE_S, max(0.0, deadline - time.monotonic())))
        raise PyroTimeoutError(
            f"could not reach the guest agent on vsock port {AGENT_VSOCK_PORT} through {path} "
            f"within {timeout:g} s: {last or 'timed out'}",
            hint="the guest may still be booting or may have failed; check its console log",
        )

    # --- warm start -------------------------------------------------------------------------

    def launch_template(self, spec: VmSpec, console_log: Path, memory: Path) -> Popen[bytes]:
        """Cold boot with portable disk names; save_snapshot() writes guest RAM to `memory`."""
        proc = self._boot(spec, console_log, portable=True)
        self.template_memory[spec.vm_dir] = memory
        return proc

    def save_snapshot(self, spec: VmSpec, state: Path) -> None:
        """Pause the template and write its device state to `state`, its RAM to `memory`.

        The VM stays paused; the caller kills it.
        """
        memory = self.template_memory.pop(spec.vm_dir, None)
        if memory is None:
            raise VmmError(
                f"VM {spec.vm_id} was not started by launch_template(): no RAM file to write"
            )
        api = FirecrackerApi(self.api_socket_path(spec), timeout=SNAPSHOT_TIMEOUT_S)
        create_snapshot(api, state, memory, jail_root=self._jail_in_use(spec), jail_uid=self.uid)

    def suspend(self, spec: VmSpec, state: Path) -> None:
        raise VmmError("the Firecracker backend cannot suspend a VM yet")

    def resume(self, spec: VmSpec, console_log: Path, state: Path) -> Popen[bytes]:
        raise VmmError("the Firecracker backend cannot resume a suspended VM yet")

    def disk_snapshot(self, spec: VmSpec, name: str, *, delete: bool = False) -> None:
        raise VmmError(
            "the Firecracker backend takes no disk snapshots (its disks are raw images)",
            hint="run the workspace with QEMU (PYRO_BACKEND=qemu) to use named snapshots",
        )

    def restore(self, spec: VmSpec, console_log: Path, snapshot: Snapshot) -> Popen[bytes]:
        """A fresh Firecracker (jailed if so configured) resuming `snapshot`, RAM copy-on-write.

        The disks go where the snapshot expects them (prepare(portable=True)). `spec` must
        have the template's disks (with or without a writable one): a stored drive that is
        missing fails the load. On any failure Firecracker exits, start() reaps it, and the
        error is a PyroError (cold boot follows).
        """
        _require_kvm()
        self.prepare(spec, portable=True)
        body = load_body(snapshot, self._jail_in_use(spec))
        return self.start(spec, console_log, lambda api: api.put("/snapshot/load", body))

    def _boot(self, spec: VmSpec, console_log: Path, *, portable: bool) -> Popen[bytes]:
        _require_kvm()
        files = self.prepare(spec, portable=portable)
        return self.start(spec, console_log, lambda api: self.configure(api, spec, files))

    def _jail_in_use(self, spec: VmSpec) -> Path | None:
        return self.jail_root(spec) if self.jailer is not None else None


def _drive(drive_id: str, path: str, *, read_only: bool) -> dict[str, Any]:
    # Not a root device: the initramfs mounts /dev/vda itself, under the overlay.
    return dict(drive_id=drive_id, path_on_host=path, is_root_device=False, is_read_only=read_only)


def _require_kvm() -> None:
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        raise HostRequirementError(
            f"{KVM_DEVICE} is missing or not readable and writable by this user",
            hint="Firecracker needs KVM; `pyro doctor` shows which backend this host can run",
        )


def _console_tail(console_log: Path) -> str:
    try:
        with console_log.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - _CONSOLE_TAIL_BYTES))
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-8:])


def _wait_for_api(proc: Popen[bytes], path: Path, console_log: Path) -> None:
    """Return once the API socket accepts connections; raise if the VMM exits or stalls."""
    deadline = time.monotonic() + API_WAIT_S
    while True:
        code = proc.poll()
        if code is not None:
            tail = _console_tail(console_log) or "no output"
            raise VmmError(
                f"Firecracker exited with code {code} before serving its API: {tail}",
                hint=f"the full output is in {console_log}",
                exit_code=code,
            )
        with contextlib.suppress(OSError):  # not bound or not listening yet
            connect_unix(path, _ATTEMPT_S).close()
            return
        if time.monotonic() >= deadline:
            raise VmmError(f"Firecracker did not serve its API within {API_WAIT_S:g} s: {path}")
        time.sleep(0.005)
