"""Firecracker backend: KVM only, configured through its HTTP API, the agent reached over vsock.

Firecracker starts empty and serves its API on `api.sock`; launch() sends the boot source,
drives, machine size and vsock device, then starts the instance (no config file is written).
The agent is reached through the vsock bridge: a UNIX socket where `CONNECT <port>` opens a
stream to that guest port. As root, the jailer runs Firecracker chrooted under an unprivileged
uid/gid: the VM's files are hard links in the chroot, Firecracker's paths are relative to it,
and its sockets live there (`api_socket_path`, `agent_socket_path`). Warm-start snapshots
are in firecracker_snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

from pyro_mcp.agent_client.client import connect_firecracker_vsock_socket
from pyro_mcp.errors import HostRequirementError, InvalidArgumentError, PyroTimeoutError, VmmError
from pyro_mcp.host.unix import connect_unix, unix_address
from pyro_mcp.protocol.frames import AGENT_VSOCK_PORT
from pyro_mcp.vmm.base import Snapshot, VmSpec, spawn_vmm
from pyro_mcp.vmm.boot_args import boot_args
from pyro_mcp.vmm.firecracker_binary import BIN_ENV, find_firecracker

API_SOCKET = "api.sock"
VSOCK_SOCKET = "vsock.sock"
ROOTFS_NAME = "rootfs"  # the disks' names in the jail, or beside a template or restored VM
RW_NAME = "rw"
GUEST_CID = 3  # 0-2 are reserved; every VM has its own bridge, so all guests can use 3
JAIL_DIR = "jail"
JAILER_UID_ENV = "PYRO_JAILER_UID"
JAILER_GID_ENV = "PYRO_JAILER_GID"
DEFAULT_JAIL_ID = 64000
KVM_DEVICE = Path("/dev/kvm")
API_WAIT_S = 5.0
API_TIMEOUT_S = 10.0
INSTALL_HINT = "pyro runtime install firecracker"
_JAILER_HINT = f"run pyro as root with the jailer installed (`{INSTALL_HINT}`), or go without it"

_ATTEMPT_S = 0.5
_RETRY_PAUSE_S = 0.02
_JAIL_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")  # what the jailer accepts as --id
_CONSOLE_TAIL_BYTES = 2000

# The jailed VMM's parent, run as `python -c`. The jailer switches to the unprivileged uid
# before exec'ing Firecracker, and a change of uid clears PR_SET_PDEATHSIG: the jailed VMM
# would outlive a killed supervisor. So this helper (which keeps spawn_vmm's death signal)
# opens a PID namespace whose init stays root and dies with the helper; when the init of a
# PID namespace dies the kernel kills everything in it, the jailed Firecracker included. The
# jailer's own --new-pid-ns cannot do this: its parent exits at once, breaking the chain. A
# namespace per VM also keeps VMs sharing the jail uid from seeing or signalling each other.
# SIGTERM or SIGKILL of the helper stops the VM; it exits with the VMM's code (128+n: signal n).
_PID_NAMESPACE_INIT = """\
import ctypes, os, select, sys
def code(status):
    n = os.waitstatus_to_exitcode(status)
    return n if n >= 0 else 128 - n
os.unshare(os.CLONE_NEWPID)
helper = os.pidfd_open(os.getpid())
init = os.fork()
if init == 0:
    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
    if select.select([helper], [], [], 0)[0]:
        os._exit(1)  # the helper died before the death signal was armed
    vmm = os.fork()
    if vmm == 0:
        os.execv(sys.argv[1], sys.argv[1:])
    os._exit(code(os.waitpid(vmm, 0)[1]))
sys.exit(code(os.waitpid(init, 0)[1]))
"""


# --- UNIX sockets -------------------------------------------------------------------------


# --- the API client -----------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a UNIX socket, which is how Firecracker serves its API."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = connect_unix(self._path, self.timeout)


def _without_none(value: Any) -> Any:
    """Drop None fields: an unset option is left out, so Firecracker applies its default."""
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_none(item) for item in value]
    return value


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _fault_message(raw: bytes) -> str:
    fault = (_json_object(raw) or {}).get("fault_message")
    if isinstance(fault, str) and fault:
        return fault
    return raw.decode("utf-8", errors="replace").strip()[:500] or "no reason given"


class FirecrackerApi:
    """Firecracker's API as a table of resources: put, patch, get; anything but 2xx raises."""

    def __init__(self, socket_path: Path, timeout: float = API_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def put(self, resource: str, body: dict[str, Any]) -> None:
        self._call("PUT", resource, body)

    def patch(self, resource: str, body: dict[str, Any]) -> None:
        self._call("PATCH", resource, body)

    def get(self, resource: str) -> dict[str, Any]:
        value = _json_object(self._call("GET", resource, None))
        if value is None:
            raise VmmError(f"Firecracker answered GET {resource} with something not a JSON object")
        return value

    def _call(self, method: str, resource: str, body: dict[str, Any] | None) -> bytes:
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:  # a GET must carry no body at all, not even `null`
            payload = json.dumps(_without_none(body)).encode()
            headers["Content-Type"] = "application/json"
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            conn.request(method, resource, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise VmmError(
                f"Firecracker API {method} {resource} failed: {exc or type(exc).__name__}",
                hint="the VMM has probably exited; check the VM's console log",
                socket=str(self.socket_path),
            ) from exc
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            fault = _fault_message(raw)
            raise VmmError(
                f"Firecracker rejected {method} {resource} ({response.status}): {fault}",
                hint="the VM's configuration or files are not usable by Firecracker",
                status=response.status,
                fault_message=fault,
            )
        return raw


# --- the jail -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestFiles:
    """The VM's files as Firecracker sees them: host paths, or paths inside its chroot."""

    kernel: str
    initrd: str
    rootfs: str
    rw_disk: str | None


def _jail_id_from_env(variable: str) -> int:
    raw = os.environ.get(variable)
    if not raw:
        return DEFAULT_JAIL_ID
    if not raw.isdigit() or not 0 < int(raw) < 2**32 - 1:
        raise InvalidArgumentError(
            f"{variable}={raw!r} is not an unprivileged numeric id",
            hint=f"give a number above 0, or unset {variable} to use {DEFAULT_JAIL_ID}",
        )
    return int(raw)


def _place(source: Path, target: Path, *, may_copy: bool) -> None:
    """Make `source` visible in the chroot: a hard link, or a copy for small read-only files."""
    try:
        os.link(source, target)
        return
    except OSError as exc:
        # A disk is too big to copy per VM, and a copy of a writable one would lose writes.
        if exc.errno != errno.EXDEV or not may_copy:
            why = "different file systems" if exc.errno == errno.EXDEV else exc.strerror
            raise HostRequirementError(
                f"cannot hard-link {source} into the Firecracker jail at {target}: {why}",
                hint="keep PYRO_CACHE_DIR and PYRO_STATE_DIR on one file system, "
                "or run pyro without root (Firecracker then runs without the jailer)",
            ) from exc
    shutil.copyfile(source, target)
    os.chmod(target, 0o444)


# --- the backend --------------------------------------------------------------------------


class FirecrackerBackend:
    name = "firecracker"
    accel = "kvm"

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
        self.uid = _jail_id_from_env(JAILER_UID_ENV) if use_jailer else os.geteuid()
        self.gid = _jail_id_from_env(JAILER_GID_ENV) if use_jailer else os.getegid()
        # Template VM directory -> where save_snapshot() is to put the guest RAM.
        self.template_memory: dict[Path, Path] = {}

    @property
    def execution_mode(self) -> str:
        return "firecracker-kvm"

    def jail_root(self, spec: VmSpec) -> Path:
        """The jailer's chroot: <base>/<exec file name>/<id>/root (it names it so itself)."""
        # The jailer canonicalises --exec-file, so a symlinked binary counts by its target.
        return spec.vm_dir / JAIL_DIR / self.binary.resolve().name / spec.vm_id / "root"

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
        return [
            sys.executable, "-I", "-S", "-c", _PID_NAMESPACE_INIT,
            str(self.jailer), "--id", spec.vm_id, "--exec-file", str(self.binary),
            "--uid", str(self.uid), "--gid", str(self.gid),
            "--chroot-base-dir", str(spec.vm_dir / JAIL_DIR),
            "--", "--api-sock", f"/{API_SOCKET}",
        ]  # fmt: skip

    def prepare(self, spec: VmSpec, *, portable: bool = False) -> GuestFiles:
        """Clear what an earlier run of this VM left and lay out its files for Firecracker.

        `portable` names the disks relative to Firecracker's working directory. A snapshot
        stores the drive paths and a restore reopens them, so only such names let every
        VM restored from one snapshot find its own disks. Paths in the jail are always so.
        """
        if self.jailer is not None:
            return self._prepare_jail(spec)
        # Firecracker will not bind a socket path that already exists.
        for name in (API_SOCKET, VSOCK_SOCKET):
            (spec.vm_dir / name).unlink(missing_ok=True)
        if not portable:
            rw = str(spec.rw_disk) if spec.rw_disk is not None else None
            return GuestFiles(str(spec.kernel), str(spec.initramfs), str(spec.rootfs), rw)
        # Symbolic links: without a chroot they resolve anywhere, across file systems too.
        for name, source in ((ROOTFS_NAME, spec.rootfs), (RW_NAME, spec.rw_disk)):
            (spec.vm_dir / name).unlink(missing_ok=True)
            if source is not None:
                (spec.vm_dir / name).symlink_to(source.absolute())
        rw = RW_NAME if spec.rw_disk is not None else None
        # The kernel and initrd are read at boot only: a restore never opens them.
        return GuestFiles(str(spec.kernel), str(spec.initramfs), ROOTFS_NAME, rw)

    def _prepare_jail(self, spec: VmSpec) -> GuestFiles:
        if not _JAIL_ID_RE.fullmatch(spec.vm_id):
            raise InvalidArgumentError(
                f"VM id {spec.vm_id!r} cannot name a Firecracker jail",
                hint="use 1-64 letters, digits or dashes",
            )
        # A previous run's device nodes would make the jailer's mknod fail.
        shutil.rmtree(spec.vm_dir / JAIL_DIR, ignore_errors=True)
        root = self.jail_root(spec)
        root.mkdir(parents=True)
        _place(spec.kernel, root / "vmlinux", may_copy=True)
        _place(spec.initramfs, root / "initrd", may_copy=True)
        _place(spec.rootfs, root / ROOTFS_NAME, may_copy=False)
        rw = None
        if spec.rw_disk is not None:
            _place(spec.rw_disk, root / RW_NAME, may_copy=False)
            os.chown(root / RW_NAME, self.uid, self.gid)  # the jailed VMM writes it
            rw = f"/{RW_NAME}"
        return GuestFiles("/vmlinux", "/initrd", f"/{ROOTFS_NAME}", rw)

    def configure(self, api: FirecrackerApi, spec: VmSpec, files: GuestFiles) -> None:
        """Describe the VM to a fresh Firecracker and start it."""
        extra = ["pyro.transport=vsock", f"pyro.hostname={spec.hostname}"]
        if files.rw_disk is not None:
            extra.append("pyro.rw=/dev/vdb")
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
        api.put("/actions", {"action_type": "InstanceStart"})

    def launch(self, spec: VmSpec, console_log: Path) -> Popen[bytes]:
        """Start Firecracker, configure it and boot the guest; on failure, kill it and raise.

        With the jailer, the process returned is the PID-namespace helper (see above).
        """
        _require_kvm()
        files = self.prepare(spec)
        return self.start(spec, console_log, lambda api: self.configure(api, spec, files))

    def start(
        self, spec: VmSpec, console_log: Path, setup: Callable[[FirecrackerApi], None]
    ) -> Popen[bytes]:
        """Run Firecracker on the prepared VM directory and `setup` it through its API.

        On any failure the VMM is killed before the error propagates: no VM without an owner.
        """
        argv = self.command(spec)
        try:
            proc = spawn_vmm(argv, spec.vm_dir, console_log)
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

    # --- warm start (the code lives in firecracker_snapshot, which builds on this module) ---

    def launch_template(self, spec: VmSpec, console_log: Path, memory: Path) -> Popen[bytes]:
        """Cold boot with portable disk names; save_snapshot() writes guest RAM to `memory`."""
        from pyro_mcp.vmm.firecracker_snapshot import launch_template

        return launch_template(self, spec, console_log, memory)

    def save_snapshot(self, spec: VmSpec, state: Path) -> None:
        """Pause the template and write its device state to `state`, its RAM to `memory`."""
        from pyro_mcp.vmm.firecracker_snapshot import save_snapshot

        save_snapshot(self, spec, state)

    def restore(self, spec: VmSpec, console_log: Path, snapshot: Snapshot) -> Popen[bytes]:
        """A fresh Firecracker resuming `snapshot`, its RAM file mapped copy-on-write."""
        from pyro_mcp.vmm.firecracker_snapshot import restore

        return restore(self, spec, console_log, snapshot)


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
