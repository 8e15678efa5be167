"""The supervisor process of one VM: `python -m pyro_mcp.supervisor VM_DIR --ready-fd N`.

It starts the VMM (which the kernel kills if the supervisor dies), waits for the guest agent,
gives the guest its identity (clock, entropy, machine-id), then serves clients on a 0600
socket until the VM must end: a client asked, the TTL passed, the one-shot owner died, the
VMM or guest failed, or a signal arrived. Then it removes every file of the VM and records
in the state store why it ended.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyro_mcp.environments.blobs import remove_tree
from pyro_mcp.errors import GuestError, PyroError, PyroTimeoutError, VmmError
from pyro_mcp.host.process import ProcessRef
from pyro_mcp.host.unix import bind_unix
from pyro_mcp.network.vm import NetworkPlan, VmNetwork, describe, guest_nic
from pyro_mcp.protocol import frames
from pyro_mcp.state.store import StateStore
from pyro_mcp.supervisor.config import CONSOLE_LOG, LOG, SOCKET, SupervisorConfig
from pyro_mcp.supervisor.ports import ServicePorts
from pyro_mcp.supervisor.relay import Relay
from pyro_mcp.vmm.base import Backend, Snapshot

log = logging.getLogger("pyro.supervisor")
RESTORE_TIMEOUT_S = 20.0
SHUTDOWN_WAIT_S = 30.0


def make_backend(name: str, accel: str) -> Backend:
    if name == "firecracker":
        from pyro_mcp.vmm.firecracker.backend import FirecrackerBackend

        return FirecrackerBackend()
    from pyro_mcp.vmm.qemu import QemuBackend

    return QemuBackend(accel)


def console_tail(vm_dir: Path, lines: int = 6) -> str:
    try:
        text = (vm_dir / CONSOLE_LOG).read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


class Supervisor:
    def __init__(self, config: SupervisorConfig) -> None:
        self.config = config
        self.spec = config.spec
        self.store = StateStore(config.state_root)
        self.backend = make_backend(config.backend, config.accel)
        self.vmm: subprocess.Popen[bytes] | None = None
        self.relay: Relay | None = None
        self.listener: socket.socket | None = None
        self._stop_reason: str | None = None
        self._stop_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._torn_down = threading.Event()
        self._shutdown_answered = threading.Event()
        self._shutdown_asked = False
        self._suspended = False
        # What a claim may change: the VM's id, TTL, owner and fate.
        self.vm_id = config.spec.vm_id
        self.expires_at = config.expires_at
        self.delete_on_exit = config.delete_on_exit
        self.owner = (
            ProcessRef(config.owner_pid, config.owner_start or 0) if config.owner_pid else None
        )
        self.network: VmNetwork | None = None
        if config.network is not None:
            plan = NetworkPlan.from_json(config.network)
            self.network = VmNetwork(plan, persistent_tap=config.backend == "firecracker")
        self.ports = ServicePorts.for_vm(config.spec.vm_dir / SOCKET, self.network)
        self._wiring: threading.Thread | None = None
        self._wiring_error: BaseException | None = None

    # --- stopping -----------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Ask the main loop to end the VM; the first reason given wins."""
        with self._stop_lock:
            if self._stop_reason is None:
                self._stop_reason = reason
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _guest_lost(self, why: str) -> None:
        # A VMM that dies closes the guest channel too, often before its exit is noticed:
        # then the reason is the VMM's exit, not the channel.
        vmm = self.vmm
        if vmm is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                vmm.wait(timeout=1.0)
            if vmm.poll() is not None:
                self.request_stop(self._vmm_exit_reason())
                return
        self.request_stop(f"guest_lost: {why}")

    def _vmm_exit_reason(self) -> str:
        assert self.vmm is not None
        code = self.vmm.poll()
        if code is None:  # poll() says None while another thread is reaping it (the relay's)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.vmm.wait(timeout=5.0)
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        tail = console_tail(self.spec.vm_dir)
        return f"vmm_exited: the VMM process ended unexpectedly ({how})" + (
            f"; console: {tail}" if tail else ""
        )

    # --- boot ---------------------------------------------------------------------------

    def boot(self) -> dict[str, Any]:
        """Restore the warm snapshot (or cold boot) and bring the agent to a configured state."""
        started = time.monotonic()
        self._open_network()
        boot_mode, note = "cold", "no snapshot given"
        if self.config.resume_state:
            boot_mode, note = "resumed", "resume"
        elif self.config.snapshot_memory and self.config.snapshot_state:
            boot_mode, note = "restored", "restore"
        if boot_mode != "cold":
            try:
                sock, info, reader = self._start(restore=True, timeout=RESTORE_TIMEOUT_S)
                note = ""
            except (PyroError, OSError) as exc:  # OSError: the VMM died under our feet
                if self._stop_reason is not None:  # told to stop: no cold boot either
                    raise
                boot_mode, note = "cold", f"{note} failed, cold boot instead: {self._failure(exc)}"
                log.warning(note)
                self._kill_vmm()
        if boot_mode == "cold":
            sock, info, reader = self._start(restore=False, timeout=self.config.boot_timeout)
        self._await_network()
        self.relay = Relay(sock, info)
        threading.Thread(
            target=self.relay.run_guest_reader,
            args=(reader,),
            name="guest-reader",
            daemon=True,
        ).start()
        self.relay.on_guest_lost = self._guest_lost
        self.relay.local_handler = self._local_op
        self.relay.after_local = self._after_local
        boot_ms = round((time.monotonic() - started) * 1000)
        return {**info, "boot_ms": boot_ms, "boot_mode": boot_mode, "boot_note": note}

    def _open_network(self) -> None:
        """The NIC's TAP before the VMM starts; the rest of the wiring runs beside the boot
        (forwarding comes on last, so the guest reaches nothing before the filter is in)."""
        if self.network is None:
            return
        self.network.open()
        assert self.network.tap_fd is not None and self.network.ns_fd is not None
        self.spec = replace(self.spec, nic=guest_nic(self.network.tap_fd, self.network.ns_fd))
        self._wiring = threading.Thread(target=self._wire, name="network-wiring", daemon=True)
        self._wiring.start()

    def _wire(self) -> None:
        assert self.network is not None
        started = time.monotonic()
        try:
            self.network.wire()
        except BaseException as exc:  # reported by _await_network, on the boot's thread
            self._wiring_error = exc
        log.info("network wired in %.0f ms", (time.monotonic() - started) * 1000)

    def _await_network(self) -> None:
        if self._wiring is None:
            return
        started = time.monotonic()
        self._wiring.join()
        # What the network added to the boot: the wiring runs beside the restore.
        log.info(
            "the guest answered; waited %.0f ms more for the network",
            (time.monotonic() - started) * 1000,
        )
        if self._wiring_error is not None:
            error = self._wiring_error
            raise VmmError(f"could not set up the VM's network: {error}") from error

    def _start(
        self, *, restore: bool, timeout: float
    ) -> tuple[socket.socket, dict[str, Any], frames.FrameReader]:
        deadline = time.monotonic() + timeout
        console = self.spec.vm_dir / CONSOLE_LOG
        if restore and self.config.resume_state:
            self.vmm = self.backend.resume(self.spec, console, Path(self.config.resume_state))
        elif restore:
            snapshot = Snapshot(
                Path(str(self.config.snapshot_memory)), Path(str(self.config.snapshot_state))
            )
            self.vmm = self.backend.restore(self.spec, console, snapshot)
        else:
            self.vmm = self.backend.launch(self.spec, console)
        sock = self.backend.connect_agent(self.spec, timeout)
        try:
            info, reader = self._handshake(sock, deadline)
        except BaseException:
            sock.close()
            raise
        return sock, info, reader

    def _failure(self, exc: BaseException) -> str:
        """Why a boot attempt failed: the VMM's exit (with its console) if it ended."""
        vmm = self.vmm
        if vmm is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                vmm.wait(timeout=1.0)
            if vmm.poll() is not None:
                return self._vmm_exit_reason()
        return str(exc) or type(exc).__name__

    def _kill_vmm(self) -> None:
        if self.vmm is not None and self.vmm.poll() is None:
            self.vmm.kill()
        if self.vmm is not None:
            self.vmm.wait()
        self.vmm = None
        for name in ("agent.sock", "qmp.sock", "api.sock", "vsock.sock"):
            (self.spec.vm_dir / name).unlink(missing_ok=True)

    def _handshake(
        self, sock: socket.socket, deadline: float
    ) -> tuple[dict[str, Any], frames.FrameReader]:
        """hello + identity as raw frames; the same reader then passes to the relay."""
        reader = frames.FrameReader(sock)
        sock.sendall(
            frames.encode_frame(
                frames.req_header(1, "hello", {"protocol": frames.PROTOCOL_VERSION})
            )
        )
        info = self._await_result(sock, reader, 1, deadline)
        if info.get("protocol") != frames.PROTOCOL_VERSION or not isinstance(info.get("ops"), list):
            raise GuestError(f"the guest agent answered hello with {info!r}")
        identity = {
            "hostname": self.spec.hostname,
            "machine_id": uuid.uuid4().hex,
            "time_ns": time.time_ns(),
            "entropy": base64.b64encode(os.urandom(64)).decode(),
        }
        sock.sendall(frames.encode_frame(frames.req_header(2, "configure", identity)))
        self._await_result(sock, reader, 2, deadline)
        if self.config.standby:
            # A restored guest translates its code anew; pay for the exec path now, not
            # when the VM is claimed.
            warm = {"argv": ["true"], "timeout": 30}
            for rid in (3, 4, 5):  # the first exec translates most, later ones the rest
                sock.sendall(frames.encode_frame(frames.req_header(rid, "exec", warm)))
                self._await_result(sock, reader, rid, deadline)
        agent = {
            "protocol": info["protocol"],
            "agent_version": str(info.get("agent_version")),
            "ops": [str(op) for op in info["ops"]],
        }
        return agent, reader

    def _await_result(
        self, sock: socket.socket, reader: frames.FrameReader, rid: int, deadline: float
    ) -> dict[str, Any]:
        """The result of request `rid`; stops early when the VMM dies, a stop is requested
        (a signal during the boot) or time runs out."""
        assert self.vmm is not None
        while True:
            if self.vmm.poll() is not None:
                raise VmmError(self._vmm_exit_reason())
            if self._stop_reason is not None:
                raise VmmError(f"boot interrupted: {self._stop_reason}")
            if time.monotonic() > deadline:
                raise PyroTimeoutError(
                    f"the guest agent did not answer within {self.config.boot_timeout:.0f} s",
                    hint=f"console: {console_tail(self.spec.vm_dir)}",
                )
            ready, _, _ = select.select([sock], [], [], 0.1)
            if not ready:
                continue
            frame = reader.read_frame()
            if frame is None:
                raise GuestError("the guest agent closed its channel during boot")
            if frame.id == rid and frame.type == frames.RES:
                if not frame.header.get("ok"):
                    raise GuestError(f"guest agent refused boot request: {frame.header}")
                result = frame.header.get("result")
                return result if isinstance(result, dict) else {}

    # --- serving ------------------------------------------------------------------------

    def _local_op(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        if op == "vm.shutdown":
            self._shutdown_asked = True
            self.request_stop(str(params.get("reason") or "stopped: requested by a client"))
            # Answer once the VM is really gone, so the caller need not poll for it.
            return {"stopped": self._torn_down.wait(SHUTDOWN_WAIT_S)}
        if op == "vm.claim":
            return self._claim(params)
        if op == "vm.suspend":
            return self._suspend(Path(str(params["state"])))
        if op == "disk.snapshot":
            name, delete = str(params["name"]), bool(params.get("delete"))
            self.backend.disk_snapshot(self.spec, name, delete=delete)
            return {"name": name, "deleted": delete}
        if op.startswith("ports."):
            return self.ports.handle(op, params)
        if op == "net.allow":
            if self.network is None:
                raise VmmError("this VM has no network device")
            self.network.set_allowlist([str(h) for h in params.get("allow_hosts") or []])
            return describe(self.network.plan)
        return {"vm_id": self.vm_id, "clients": self.relay.client_count() if self.relay else 0}

    def _suspend(self, state: Path) -> dict[str, Any]:
        """Write the whole running VM (RAM, devices) to `state`, then end it: the VMM is
        paused from the end of the write until the teardown kills it."""
        if not self.backend.can_suspend:
            raise VmmError(f"the {self.backend.name} backend cannot suspend a VM")
        assert self.relay is not None
        self.relay.detach_guest()
        # As before a template snapshot: the agent must see the host leave, so the resumed
        # agent waits for a new host instead of answering the old one.
        time.sleep(0.1)
        started = time.monotonic()
        try:
            # Made here, private: the VMM's writer only truncates it (it keeps the mode).
            os.close(os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600))
            os.chmod(state, 0o600)
            self.backend.suspend(self.spec, state)
        except BaseException:
            state.unlink(missing_ok=True)
            self.request_stop("suspend_failed: the VM could not be written out")
            raise
        suspend_ms = round((time.monotonic() - started) * 1000)
        log.info("suspended to %s in %d ms", state, suspend_ms)
        self._suspended = True  # the VM ends once the answer is out: _after_local
        return {"suspend_ms": suspend_ms, "state_bytes": state.stat().st_size}

    def _after_local(self, op: str) -> None:
        if op == "vm.shutdown":
            self._shutdown_answered.set()
        if op == "vm.suspend" and self._suspended:
            self.request_stop("stopped: suspended")

    def _claim(self, params: dict[str, Any]) -> dict[str, Any]:
        """Hand a standby VM to its user: new id, TTL, owner and fate."""
        self.vm_id = str(params["vm_id"])
        self.expires_at = float(params["expires_at"])
        self.delete_on_exit = bool(params.get("delete_on_exit"))
        owner_pid = params.get("owner_pid")
        self.owner = ProcessRef(int(owner_pid), int(params["owner_start"])) if owner_pid else None
        log.info("claimed as %s", self.vm_id)
        self.request_refresh()
        return {"vm_id": self.vm_id}

    def request_refresh(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"r")

    def listen(self) -> None:
        path = self.spec.vm_dir / SOCKET
        path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            bind_unix(self.listener, path)
        finally:
            os.umask(old)
        self.listener.listen(64)

    def serve(self) -> str:
        """Run until something ends the VM; returns the reason."""
        assert self.vmm is not None and self.listener is not None and self.relay is not None
        vmm_fd = os.pidfd_open(self.vmm.pid)
        owner, owner_fd = self.owner, self._owner_pidfd()
        while self._stop_reason is None:
            if self.owner != owner:  # claimed: watch the new owner instead
                if owner_fd is not None:
                    os.close(owner_fd)
                owner, owner_fd = self.owner, self._owner_pidfd()
                continue
            left = self.expires_at - time.time()
            if left <= 0:
                self.request_stop("ttl_expired: the VM reached its TTL")
                break
            watched = [self.listener.fileno(), self._wake_r, vmm_fd]
            watched += [owner_fd] if owner_fd is not None else []
            ready, _, _ = select.select(watched, [], [], min(left, 60.0))
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            if vmm_fd in ready:
                self.request_stop(self._vmm_exit_reason())
            elif owner_fd is not None and owner_fd in ready:
                self.request_stop("owner_exited: the process that ran this one-shot VM died")
            elif self.listener.fileno() in ready:
                self._accept()
        os.close(vmm_fd)
        if owner_fd is not None:
            os.close(owner_fd)
        assert self._stop_reason is not None
        return self._stop_reason

    def _owner_pidfd(self) -> int | None:
        owner = self.owner
        if owner is None:
            return None
        try:
            fd = os.pidfd_open(owner.pid)
        except ProcessLookupError:
            fd = None
        if fd is None or not owner.alive():
            self.request_stop("owner_exited: the process that ran this one-shot VM died")
        return fd

    def _accept(self) -> None:
        assert self.listener is not None and self.relay is not None
        conn, _ = self.listener.accept()
        threading.Thread(target=self.relay.serve_client, args=(conn,), daemon=True).start()

    # --- teardown -----------------------------------------------------------------------

    def teardown(self, reason: str) -> None:
        """Kill the VMM, remove every file of the VM, and record the outcome."""
        self.ports.close_all()  # published ports end with the VM, before anything else
        if self.listener is not None:
            self.listener.close()
        if self.vmm is not None and self.vmm.poll() is None:
            self.vmm.kill()
        if self.vmm is not None:
            self.vmm.wait()
        if self._wiring is not None:
            self._wiring.join()
        if self.network is not None:
            self.network.close()  # the kernel frees the namespace with its last holder
        remove_vm_files(self.spec.vm_dir)
        record(self.store, self.vm_id, self.delete_on_exit, reason)
        self._torn_down.set()
        if self._shutdown_asked:  # let the client's answer go out before the sockets close
            self._shutdown_answered.wait(1.0)
        if self.relay is not None:
            self.relay.close_clients()


def remove_vm_files(vm_dir: Path) -> None:
    """Every file, socket and disk of the VM, its directory included."""
    remove_tree(vm_dir)


def record(store: StateStore, vm_id: str, delete_on_exit: bool, reason: str) -> None:
    if delete_on_exit or reason.startswith("ttl_expired"):
        store.delete_vm(vm_id)
        return
    store.update_vm(
        vm_id,
        state="stopped",
        stop_reason=reason,
        stopped_at=time.time(),
        supervisor_pid=None,
        supervisor_start=None,
        net_slot=None,
    )


def _report(ready_fd: int, payload: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        os.write(ready_fd, (json.dumps(payload) + "\n").encode())
    with contextlib.suppress(OSError):
        os.close(ready_fd)


def run(vm_dir: Path, ready_fd: int) -> int:
    logging.basicConfig(filename=vm_dir / LOG, level=logging.INFO, format="%(asctime)s %(message)s")
    config = SupervisorConfig.load(vm_dir)
    sup = Supervisor(config)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda n, _f: sup.request_stop(f"stopped: signal {n}"))
    try:
        info = sup.boot()
        sup.listen()
    except Exception as exc:  # any boot failure is reported to the launcher, then cleaned
        reason = sup._vmm_exit_reason() if sup.vmm and sup.vmm.poll() is not None else str(exc)
        _report(ready_fd, {"ok": False, "error": f"boot_failed: {reason}"})
        sup.teardown(f"boot_failed: {reason}")
        return 1
    if config.standby:
        sup.store.update_vm(config.spec.vm_id, state="standby", boot_mode=info["boot_mode"])
    _report(ready_fd, {"ok": True, "agent": info, "supervisor_pid": os.getpid()})
    reason = sup.serve()
    log.info("stopping: %s", reason)
    sup.teardown(reason)
    return 0
