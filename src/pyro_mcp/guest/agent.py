"""pyro guest agent: serves the guest protocol (see protocol.py) inside the VM.

Runs as ``python3 /opt/pyro/agent/agent.py`` with protocol.py next to it, so it stays
stdlib-only and Python 3.11 compatible. The transport is virtio-serial or AF_VSOCK, chosen by
``pyro.transport=`` on the kernel command line, or ``--unix PATH`` for tests on the host.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import glob
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

try:
    from pyro_mcp.guest import protocol
except ImportError:  # inside the guest protocol.py sits next to this script
    import protocol  # type: ignore[no-redef, import-not-found]

log = logging.getLogger("pyro-agent")

_RNDADDENTROPY = 0x40085203
_RNDRESEEDCRNG = 0x5207
_REBOOT_CMDS = {"poweroff": 0x4321FEDC, "reboot": 0x01234567}
_JOIN_GRACE = 5.0
_SERIAL_IDLE = 0.002
_READ_SIZE = 64 * 1024
_SEND_CHUNK = 256 * 1024
# Background jobs may hold the pipes open after the command exits; wait only briefly for them.
_DRAIN_GRACE = 0.2
_KILL_GRACE = 5.0

Params = dict[str, Any]


class OpError(Exception):
    """Ends a request with an error result carrying `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _power(action: str) -> None:
    """Stop the machine through reboot(2); a VMM without ACPI exits on reboot."""
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.reboot(_REBOOT_CMDS[action]) != 0:
        log.error("reboot(2) failed: %s", os.strerror(ctypes.get_errno()))
        os.system(f"{action} -f")


@dataclass
class AgentConfig:
    """Where the agent writes identity files, and whether it may change kernel state."""

    hostname_path: str = "/etc/hostname"
    machine_id_path: str = "/etc/machine-id"
    urandom_path: str = "/dev/urandom"
    random_path: str = "/dev/random"
    system_calls: bool = True
    power: Callable[[str], None] = _power

    @classmethod
    def sandboxed(cls, root: str) -> AgentConfig:
        """Files under `root`; no hostname, clock, entropy credit or power changes (tests)."""
        return cls(
            hostname_path=os.path.join(root, "etc/hostname"),
            machine_id_path=os.path.join(root, "etc/machine-id"),
            urandom_path=os.path.join(root, "dev/urandom"),
            random_path=os.path.join(root, "dev/random"),
            system_calls=False,
            power=lambda action: log.info("sandboxed: not doing %s", action),
        )


class Call:
    """One request in flight: how to answer it and how to cancel it."""

    def __init__(self, session: Session, rid: int, op: str) -> None:
        self.session, self.rid, self.op = session, rid, op
        self.cancelled = threading.Event()
        self.after: Callable[[], None] | None = None
        self._hook: Callable[[], None] | None = None
        self._hook_lock = threading.Lock()

    def cancel(self) -> None:
        with self._hook_lock:
            self.cancelled.set()
            if self._hook is not None:
                self._hook()

    def on_cancel(self, hook: Callable[[], None] | None) -> None:
        """Install (or, with None, remove) what cancel() triggers; runs it if already due."""
        with self._hook_lock:
            self._hook = hook
            if hook is not None and self.cancelled.is_set():
                hook()

    def send_output(self, stream: str, data: bytes) -> None:
        self.session.send(protocol.out_header(self.rid, stream), data)


def _write_all(channel: Any, data: bytes) -> None:
    if hasattr(channel, "sendall"):
        channel.sendall(data)
        return
    view = memoryview(data)
    while view:
        view = view[channel.write(view) or 0 :]


class Session:
    """One host connection: reads frames, runs each request on its own thread."""

    def __init__(self, agent: Agent, channel: Any) -> None:
        self.agent, self._channel = agent, channel
        self._write_lock = threading.Lock()  # frames must never interleave mid-frame
        self._lock = threading.Lock()
        self._closed = self._greeted = False
        self._calls: dict[int, Call] = {}
        self._threads: list[threading.Thread] = []
        self.frames = 0
        self.broken = False  # ended by a protocol error rather than end of stream

    def send(self, header: Params, body: bytes = b"") -> None:
        """Write one whole frame; once the connection is gone, frames are dropped."""
        data = protocol.encode_frame(header, body)
        with self._write_lock:
            if self._closed:
                return
            try:
                _write_all(self._channel, data)
            except OSError as exc:
                log.warning("connection lost while writing: %s", exc)
                self._closed = True

    def run(self) -> None:
        """Serve until end of stream or a protocol error, then cancel what still runs."""
        reader = protocol.FrameReader(self._channel)
        try:
            while (frame := reader.read_frame()) is not None:
                self.frames += 1
                self._handle(frame)
        except protocol.FrameError as exc:
            log.warning("dropping connection: %s", exc)
            self.send(protocol.error_header(0, protocol.ERR_PROTOCOL, str(exc)))
            self.broken = True
        except OSError as exc:
            log.warning("connection failed: %s", exc)
            self.broken = True
        finally:
            self.close()

    def close(self) -> None:
        """Stop writing, cancel every request, wait (bounded) for their threads."""
        # Taking the lock waits out a frame being written, but a host that stopped reading
        # must not hang us here forever.
        locked = self._write_lock.acquire(timeout=_JOIN_GRACE)
        self._closed = True
        if locked:
            self._write_lock.release()
        with self._lock:
            calls, threads = list(self._calls.values()), list(self._threads)
        for call in calls:
            call.cancel()
        deadline = time.monotonic() + _JOIN_GRACE
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _handle(self, frame: protocol.Frame) -> None:
        rid, header = frame.id, frame.header
        if frame.type == protocol.CANCEL:
            with self._lock:
                call = self._calls.get(rid)
            if call is not None:
                call.cancel()
        elif frame.type != protocol.REQ:
            raise protocol.FrameError(f"the host may not send {frame.type} frames")
        elif header["op"] == "hello":
            # Answered inline, so no later request can overtake the handshake.
            self._answer(rid, lambda: self._hello(header.get("params", {})))
        elif not self._greeted:
            message = "the first request on a connection must be hello"
            self.send(protocol.error_header(rid, protocol.ERR_HANDSHAKE_REQUIRED, message))
        elif header["op"] not in self.agent.ops:
            message = f"unknown operation {header['op']!r}"
            self.send(protocol.error_header(rid, protocol.ERR_UNKNOWN_OP, message))
        else:
            self._start(Call(self, rid, header["op"]), header.get("params", {}))

    def _hello(self, params: Params) -> Params:
        protocol.check_keys(params, {"protocol"})
        theirs = params.get("protocol")
        if not isinstance(theirs, int) or isinstance(theirs, bool):
            raise protocol.ParamError("hello needs an integer protocol")
        if theirs != protocol.PROTOCOL_VERSION:
            message = (
                f"host speaks guest protocol {theirs}, this agent speaks "
                f"{protocol.PROTOCOL_VERSION}; use a pyro-mcp and an environment of one release"
            )
            raise OpError(protocol.ERR_VERSION_MISMATCH, message)
        self._greeted = True
        ops = sorted([*self.agent.ops, "hello"])
        return {"protocol": theirs, "agent_version": protocol.AGENT_VERSION, "ops": ops}

    def _start(self, call: Call, params: Params) -> None:
        with self._lock:
            if call.rid in self._calls:
                message = f"request id {call.rid} is already in use"
                self.send(protocol.error_header(call.rid, protocol.ERR_INVALID_ARGUMENT, message))
                return
            self._calls[call.rid] = call
            self._threads = [t for t in self._threads if t.is_alive()]
            thread = threading.Thread(target=self._run_call, args=(call, params), daemon=True)
            self._threads.append(thread)
        thread.start()

    def _run_call(self, call: Call, params: Params) -> None:
        try:
            handler = self.agent.ops[call.op]
            self._answer(call.rid, lambda: handler(call, params))
            if call.after is not None:
                call.after()
        finally:
            with self._lock:
                self._calls.pop(call.rid, None)

    def _answer(self, rid: int, work: Callable[[], Params]) -> None:
        """Run `work` and send its outcome; no request may take the agent down."""
        try:
            header = protocol.ok_header(rid, work())
        except OpError as exc:
            header = protocol.error_header(rid, exc.code, str(exc))
        except protocol.ParamError as exc:
            header = protocol.error_header(rid, protocol.ERR_INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            log.exception("request %d failed", rid)
            header = protocol.error_header(rid, protocol.ERR_INTERNAL, f"agent error: {exc}")
        self.send(header)


class Agent:
    """The operations, their configuration and every live session."""

    def __init__(self, config: AgentConfig | None = None) -> None:
        self.config = config or AgentConfig()
        self.ops: dict[str, Callable[[Call, Params], Params]] = {
            "ping": self._ping,
            "exec": self._exec,
            "configure": self._configure,
            "sync": self._sync,
            "shutdown": self._shutdown,
        }
        self._lock = threading.Lock()
        self._sessions: set[Session] = set()

    def serve_connection(self, channel: Any) -> Session:
        """Serve one connection until it ends; returns the finished session.

        The caller owns `channel` and closes it: a serial port outlives its sessions.
        """
        session = Session(self, channel)
        with self._lock:
            self._sessions.add(session)
        try:
            session.run()
        finally:
            with self._lock:
                self._sessions.discard(session)
        return session

    def stop(self) -> None:
        """Cancel every request of every session; their process groups die with them."""
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close()

    def _ping(self, call: Call, params: Params) -> Params:
        protocol.check_keys(params, ())
        return {"pong": True, "time": time.time(), "time_ns": time.time_ns()}

    def _exec(self, call: Call, params: Params) -> Params:
        spec = protocol.parse_exec(params)
        if not os.path.isdir(spec.cwd):
            message = f"working directory {spec.cwd} does not exist in the guest"
            raise OpError(protocol.ERR_NOT_FOUND, message)
        return run_exec(spec, call)

    def _sync(self, call: Call, params: Params) -> Params:
        protocol.check_keys(params, ())
        os.sync()
        return {}

    def _shutdown(self, call: Call, params: Params) -> Params:
        protocol.check_keys(params, {"action"})
        action = params.get("action", "poweroff")
        if action not in _REBOOT_CMDS:
            raise protocol.ParamError("action must be poweroff or reboot")
        os.sync()
        # After the answer is sent: the host should learn the request succeeded.
        call.after = lambda: self.config.power(action)
        return {"action": action}

    def _configure(self, call: Call, params: Params) -> Params:
        ident, cfg = protocol.parse_configure(params), self.config
        steps: list[tuple[str, Any, Callable[[Any], None]]] = [
            ("hostname", ident.hostname, lambda name: _set_hostname(cfg, name)),
            ("machine_id", ident.machine_id, lambda mid: _write_line(cfg.machine_id_path, mid)),
            ("time", ident.time_ns, lambda stamp: _set_clock(cfg, stamp)),
            ("entropy", ident.entropy, lambda seed: _add_entropy(cfg, seed)),
        ]
        applied: list[str] = []
        warnings: list[str] = []
        for name, value, apply in steps:
            if value is None:
                continue
            try:
                apply(value)
                applied.append(name)
            except OSError as exc:
                warnings.append(f"{name}: {exc}")
                log.warning("configure %s failed: %s", name, exc)
        return {"applied": applied, "warnings": warnings}


def _write_line(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text + "\n")


def _set_hostname(config: AgentConfig, name: str) -> None:
    if config.system_calls:
        socket.sethostname(name)
    try:
        _write_line(config.hostname_path, name)
    except OSError as exc:
        # A read-only /etc is fine: the kernel's hostname is what counts.
        log.info("not writing %s: %s", config.hostname_path, exc)


def _set_clock(config: AgentConfig, stamp: int) -> None:
    if config.system_calls:
        time.clock_settime_ns(time.CLOCK_REALTIME, stamp)


def _add_entropy(config: AgentConfig, seed: bytes) -> None:
    # Writing mixes the seed in without crediting it; only the ioctl credits entropy.
    with open(config.urandom_path, "ab", buffering=0) as pool:
        pool.write(seed)
    if config.system_calls and os.geteuid() == 0:
        request = struct.pack("ii", len(seed) * 8, len(seed)) + seed
        with open(config.random_path, "wb", buffering=0) as device:
            fcntl.ioctl(device.fileno(), _RNDADDENTROPY, request)
            # Clones restored from one snapshot share the kernel's CRNG state; crediting new
            # entropy does not reseed it before the next interval, so force the reseed now.
            fcntl.ioctl(device.fileno(), _RNDRESEEDCRNG)


# --- exec ----------------------------------------------------------------------------------


class _Capture:
    """One output pipe: keeps (or streams) its first `limit` bytes, discards the rest."""

    def __init__(self, name: str, fd: int, limit: int, sink: Callable[[str, bytes], None] | None):
        self.name, self.fd, self.limit, self.sink = name, fd, limit, sink
        self.data = bytearray()
        self.kept = 0
        self.truncated = self.eof = False

    def read(self) -> None:
        try:
            chunk = os.read(self.fd, _READ_SIZE)
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            return
        keep = chunk[: max(0, self.limit - self.kept)]
        self.truncated = self.truncated or len(keep) < len(chunk)
        self.kept += len(keep)
        if keep and self.sink is not None:
            self.sink(self.name, keep)
        elif keep:
            self.data += keep


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _poke(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, b"x")


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class _Supervisor:
    """Pumps a child's output until it exits; kills its process group on timeout or cancel."""

    def __init__(self, proc: subprocess.Popen[bytes], caps: list[_Capture], call: Call):
        self.proc, self.caps, self.call = proc, caps, call
        self.timed_out = self.cancelled = False
        self.exited_at: float | None = None
        self.give_up: float | None = None  # set once killed: how long to wait for the exit

    def run(self, timeout: float) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        pidfd = _open_pidfd(self.proc.pid)
        sel = selectors.DefaultSelector()
        sel.register(wake_r, selectors.EVENT_READ, "wake")
        for cap in self.caps:
            sel.register(cap.fd, selectors.EVENT_READ, cap)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ, "exit")
        self.call.on_cancel(lambda: _poke(wake_w))
        try:
            self._loop(sel, time.monotonic() + timeout, pidfd, wake_r)
        finally:
            # Unhook before closing: a late cancel must not write to a recycled fd.
            self.call.on_cancel(None)
            sel.close()
            for fd in (wake_r, wake_w, pidfd):
                if fd is not None:
                    os.close(fd)

    def _kill(self, now: float) -> None:
        _kill_group(self.proc.pid)
        self.give_up = now + _KILL_GRACE

    def _next_wakeup(self, now: float, deadline: float) -> float | None:
        """When to look again, or None when supervision is over."""
        if self.exited_at is not None:
            done = all(cap.eof for cap in self.caps) or now >= self.exited_at + _DRAIN_GRACE
            return None if done else self.exited_at + _DRAIN_GRACE
        if self.give_up is not None:
            return None if now >= self.give_up else self.give_up
        if now >= deadline:
            self.timed_out = True
            self._kill(now)
            return now
        return deadline

    def _loop(
        self, sel: selectors.BaseSelector, deadline: float, pidfd: int | None, wake: int
    ) -> None:
        while True:
            now = time.monotonic()
            if self.exited_at is None and self.proc.poll() is not None:
                self.exited_at = now
                if pidfd is not None:
                    sel.unregister(pidfd)
            until = self._next_wakeup(now, deadline)
            if until is None:
                return
            # Without a pidfd only polling notices the exit.
            wait = until - now if pidfd is not None else min(until - now, 0.02)
            for key, _ in sel.select(max(wait, 0.0)):
                if isinstance(key.data, _Capture):
                    key.data.read()
                    if key.data.eof:
                        sel.unregister(key.fd)
                elif key.data == "wake":
                    os.read(wake, 64)
                    if self.exited_at is None and self.give_up is None:
                        self.cancelled = True
                        self._kill(now)


def _exit_code(returncode: int | None) -> int:
    if returncode is None:
        return 128 + signal.SIGKILL
    return 128 - returncode if returncode < 0 else returncode


def _exec_result(code: int, kept: list[tuple[int, bool]], started: float, **flags: bool) -> Params:
    result: Params = {"exit_code": code}
    for stream, (count, truncated) in zip(protocol.STREAMS, kept, strict=True):
        result[f"{stream}_bytes"] = count
        result[f"{stream}_truncated"] = truncated
    result["duration_ms"] = int((time.monotonic() - started) * 1000)
    return {**result, "timed_out": False, "cancelled": False, **flags}


def _spawn_failure(spec: protocol.ExecSpec, exc: OSError, call: Call, started: float) -> Params:
    """Answer as a shell would: 127 for a missing program, 126 for one that cannot run."""
    name = spec.argv[0]
    if isinstance(exc, FileNotFoundError):
        code, text = protocol.EXIT_NOT_FOUND, f"pyro-agent: {name}: command not found\n"
    else:
        code, text = protocol.EXIT_NOT_EXECUTABLE, f"pyro-agent: {name}: {exc.strerror}\n"
    message = text.encode()[: spec.max_output]
    call.send_output("stderr", message)
    return _exec_result(code, [(0, False), (len(message), False)], started)


def run_exec(spec: protocol.ExecSpec, call: Call) -> Params:
    """Run one command until it exits, times out or is cancelled; describe the outcome."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=spec.cwd,
            env=spec.env,
            start_new_session=True,
        )
    except OSError as exc:
        return _spawn_failure(spec, exc, call, started)
    assert proc.stdout is not None and proc.stderr is not None
    sink = call.send_output if spec.stream else None
    pipes = zip(protocol.STREAMS, (proc.stdout, proc.stderr), strict=True)
    caps = [_Capture(name, pipe.fileno(), spec.max_output, sink) for name, pipe in pipes]
    watch = _Supervisor(proc, caps, call)
    try:
        watch.run(spec.timeout)
    finally:
        proc.stdout.close()
        proc.stderr.close()
        if proc.poll() is None:
            _kill_group(proc.pid)
    for cap in caps:
        for start in range(0, len(cap.data), _SEND_CHUNK):
            call.send_output(cap.name, bytes(cap.data[start : start + _SEND_CHUNK]))
    code = protocol.EXIT_TIMEOUT if watch.timed_out else _exit_code(proc.returncode)
    kept = [(cap.kept, cap.truncated) for cap in caps]
    return _exec_result(code, kept, started, timed_out=watch.timed_out, cancelled=watch.cancelled)


# --- transports ----------------------------------------------------------------------------


def _serve_socket(agent: Agent, conn: socket.socket) -> None:
    with conn:
        agent.serve_connection(conn)


def _accept_loop(agent: Agent, listener: socket.socket) -> None:
    """Accept until accept() fails; every connection gets its own thread."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            log.warning("accept failed, recreating the listener: %s", exc)
            return
        threading.Thread(target=_serve_socket, args=(agent, conn), daemon=True).start()


def _listen_forever(agent: Agent, family: int, address: Any, unlink: str | None = None) -> None:
    """Listen and serve; a failed listener (vsock reset by a snapshot restore) is rebuilt."""
    while True:
        try:
            if unlink is not None and os.path.exists(unlink):
                os.unlink(unlink)
            listener = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            log.error("cannot create a listener: %s", exc)
            time.sleep(0.5)
            continue
        with listener:
            try:
                listener.bind(address)
                listener.listen(64)
            except OSError as exc:
                log.error("cannot listen on %s: %s", address, exc)
                time.sleep(0.1)
                continue
            log.info("listening on %s", address)
            _accept_loop(agent, listener)
        time.sleep(0.01)


def find_serial_port(name: str = protocol.SERIAL_PORT_NAME) -> str | None:
    """The /dev node of the virtio-serial port called `name`, if there is one."""
    for name_file in sorted(glob.glob("/sys/class/virtio-ports/*/name")):
        with contextlib.suppress(OSError), open(name_file, encoding="utf-8") as handle:
            if handle.read().strip() == name:
                return "/dev/" + os.path.basename(os.path.dirname(name_file))
    return None


def serve_serial(agent: Agent) -> None:
    """Serve the virtio-serial port; every host (re)connection is a new session."""
    while (path := find_serial_port()) is None or not os.path.exists(path):
        time.sleep(0.05)
    log.info("serving virtio-serial port %s", path)
    with open(path, "r+b", buffering=0) as port:
        while True:
            session = agent.serve_connection(port)
            if session.broken:
                _discard_until_eof(port)
            # The port reads EOF while no host is attached, so an empty session means idle.
            if session.frames == 0:
                time.sleep(_SERIAL_IDLE)


def _discard_until_eof(port: Any) -> None:
    """Skip the rest of a broken session: only the host reconnecting resynchronises us."""
    scratch = bytearray(_READ_SIZE)
    with contextlib.suppress(OSError):
        while port.readinto(scratch):
            pass


def kernel_transport(cmdline_path: str = "/proc/cmdline") -> str:
    """The transport named by ``pyro.transport=`` on the kernel command line (default vsock)."""
    try:
        with open(cmdline_path, encoding="utf-8") as handle:
            words = handle.read().split()
    except OSError:
        words = []
    found = [w.partition("=")[2] for w in words if w.startswith("pyro.transport=")]
    return found[-1] if found else "vsock"


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point: pick the transport and serve until terminated."""
    parser = argparse.ArgumentParser(prog="pyro-agent")
    parser.add_argument("--unix", metavar="PATH", help="listen on a UNIX socket (tests)")
    parser.add_argument("--transport", choices=("serial", "vsock"), help="override the cmdline")
    parser.add_argument("--sandbox-root", metavar="DIR", help="identity files under DIR (tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="pyro-agent: %(message)s")
    config = AgentConfig.sandboxed(args.sandbox_root) if args.sandbox_root else AgentConfig()
    agent = Agent(config)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.unix:
            _listen_forever(agent, socket.AF_UNIX, args.unix, unlink=args.unix)
        elif (args.transport or kernel_transport()) == "serial":
            serve_serial(agent)
        else:
            address = (socket.VMADDR_CID_ANY, protocol.AGENT_VSOCK_PORT)
            _listen_forever(agent, socket.AF_VSOCK, address)
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
