"""pyro guest agent: serves the guest protocol (see pyro_mcp/protocol/frames.py) inside the VM.

Runs as ``python3 -m pyro_mcp.agent`` with only this package and pyro_mcp.protocol on its
path (the initramfs ships nothing else), so it stays stdlib-only and Python 3.11 compatible.
The transport is virtio-serial or AF_VSOCK, chosen by ``pyro.transport=`` on the kernel
command line, or ``--unix PATH`` for tests on the host.

This module is the transport, the sessions and the dispatch; the operations live in
commands.py (exec), files.py (file.*, tree.manifest), archives.py (tar.*),
patches.py (patch.apply), shells.py (shell.*), services.py (service.*), guest_secrets.py
(secrets.put, secret_env, redaction) and system.py (configure, power).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pyro_mcp.agent import archives, commands, files, guest_secrets, patches, services, shells
from pyro_mcp.agent.system import REBOOT_CMDS, AgentConfig, configure
from pyro_mcp.protocol import frames, ops

log = logging.getLogger("pyro-agent")

_JOIN_GRACE = 5.0
_SERIAL_IDLE = 0.002
_READ_SIZE = 64 * 1024

Params = dict[str, Any]
OpError = frames.OpError
__all__ = ["Agent", "AgentConfig", "Call", "OpError", "Session", "main"]


class InputStream:
    """The input the host streams to one request: a bounded queue, ended by an empty frame.

    put() runs on the session's reader thread and blocks while the queue is full; that stalls
    the whole connection, which is the protocol's flow control. It never stalls for long,
    because every operation that takes input reads it eagerly, and close() (the request ended)
    or cancel() releases it.
    """

    def __init__(self, limit: int = frames.INPUT_QUEUE_BYTES) -> None:
        self._limit = limit
        self._cond = threading.Condition()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._ended = self._closed = self._cancelled = False

    def put(self, data: bytes) -> None:
        with self._cond:
            if self._closed or self._ended:
                return  # late input of a request that stopped reading; harmless
            if not data:
                self._ended = True
                self._cond.notify_all()
                return
            while self._queued >= self._limit and not self._closed:
                self._cond.wait()
            if not self._closed:
                self._chunks.append(data)
                self._queued += len(data)
                self._cond.notify_all()

    def read(self) -> bytes:
        """The next chunk, b"" at the end of the input; OpError once the request is cancelled."""
        with self._cond:
            while not self._chunks and not self._ended and not self._cancelled:
                self._cond.wait()
            if self._cancelled:
                raise OpError(frames.ERR_CANCELLED, "the request was cancelled")
            if not self._chunks:
                return b""
            chunk = self._chunks.popleft()
            self._queued -= len(chunk)
            self._cond.notify_all()
            return chunk

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def close(self) -> None:
        """The request is over: drop what is queued and whatever still arrives."""
        with self._cond:
            self._closed = True
            self._chunks.clear()
            self._queued = 0
            self._cond.notify_all()


class Call:
    """One request in flight: how to answer it, how to cancel it, and its input if it takes
    any."""

    def __init__(self, session: Session, rid: int, op: str, takes_input: bool = False) -> None:
        self.session, self.rid, self.op = session, rid, op
        self.cancelled = threading.Event()
        self.input = InputStream() if takes_input else None
        self.after: Callable[[], None] | None = None
        self._hook: Callable[[], None] | None = None
        self._hook_lock = threading.Lock()

    def cancel(self) -> None:
        with self._hook_lock:
            self.cancelled.set()
            if self.input is not None:
                self.input.cancel()
            if self._hook is not None:
                self._hook()

    def on_cancel(self, hook: Callable[[], None] | None) -> None:
        """Install (or, with None, remove) what cancel() triggers; runs it if already due."""
        with self._hook_lock:
            self._hook = hook
            if hook is not None and self.cancelled.is_set():
                hook()

    def check_cancelled(self) -> None:
        """For long loops: stop with a cancelled error once the host gave up."""
        if self.cancelled.is_set():
            raise OpError(frames.ERR_CANCELLED, "the request was cancelled")

    def read_input(self) -> bytes:
        """The next chunk of the request's input; b"" at its end."""
        if self.input is None:
            raise OpError(frames.ERR_INTERNAL, f"{self.op} takes no input")
        return self.input.read()

    def send_output(self, stream: str, data: bytes) -> None:
        self.session.send(frames.out_header(self.rid, stream), data)


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
        data = frames.encode_frame(header, body)
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
        reader = frames.FrameReader(self._channel)
        try:
            while (frame := reader.read_frame()) is not None:
                self.frames += 1
                self._handle(frame)
        except frames.FrameError as exc:
            log.warning("dropping connection: %s", exc)
            self.send(frames.error_header(0, frames.ERR_PROTOCOL, str(exc)))
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

    def _handle(self, frame: frames.Frame) -> None:
        rid, header = frame.id, frame.header
        if frame.type in (frames.CANCEL, frames.IN):
            with self._lock:
                call = self._calls.get(rid)
            # Frames for a request that already ended (or never existed) are dropped: the host
            # may still be streaming input when an early error answered its request.
            if call is not None and frame.type == frames.CANCEL:
                call.cancel()
            elif call is not None and call.input is not None:
                call.input.put(frame.body)
        elif frame.type != frames.REQ:
            raise frames.FrameError(f"the host may not send {frame.type} frames")
        elif header["op"] == "hello":
            # Answered inline, so no later request can overtake the handshake.
            self._answer(rid, lambda: self._hello(header.get("params", {})))
        elif not self._greeted:
            message = "the first request on a connection must be hello"
            self.send(frames.error_header(rid, frames.ERR_HANDSHAKE_REQUIRED, message))
        elif header["op"] not in self.agent.ops:
            message = f"unknown operation {header['op']!r}"
            self.send(frames.error_header(rid, frames.ERR_UNKNOWN_OP, message))
        else:
            takes_input = header["op"] in self.agent.input_ops
            self._start(Call(self, rid, header["op"], takes_input), header.get("params", {}))

    def _hello(self, params: Params) -> Params:
        ops.check_keys(params, {"protocol"})
        theirs = params.get("protocol")
        if not isinstance(theirs, int) or isinstance(theirs, bool):
            raise ops.ParamError("hello needs an integer protocol")
        if theirs != frames.PROTOCOL_VERSION:
            message = (
                f"host speaks guest protocol {theirs}, this agent speaks "
                f"{frames.PROTOCOL_VERSION}; use a pyro-mcp and an environment of one release"
            )
            raise OpError(frames.ERR_VERSION_MISMATCH, message)
        self._greeted = True
        names = sorted([*self.agent.ops, "hello"])
        return {"protocol": theirs, "agent_version": frames.AGENT_VERSION, "ops": names}

    def _start(self, call: Call, params: Params) -> None:
        with self._lock:
            if call.rid in self._calls:
                message = f"request id {call.rid} is already in use"
                self.send(frames.error_header(call.rid, frames.ERR_INVALID_ARGUMENT, message))
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
            if call.input is not None:
                call.input.close()  # releases a reader blocked on a full queue

    def _answer(self, rid: int, work: Callable[[], Params]) -> None:
        """Run `work` and send its outcome; no request may take the agent down."""
        try:
            header = frames.ok_header(rid, work())
        except OpError as exc:
            header = frames.error_header(rid, exc.code, str(exc))
        except ops.ParamError as exc:
            header = frames.error_header(rid, frames.ERR_INVALID_ARGUMENT, str(exc))
        except OSError as exc:
            # A full disk or a vanished file is the guest's state, not an agent bug.
            log.info("request %d failed: %s", rid, exc)
            header = frames.error_header(rid, frames.ERR_IO, str(exc)[:2000])
        except Exception as exc:
            log.exception("request %d failed", rid)
            header = frames.error_header(rid, frames.ERR_INTERNAL, f"agent error: {exc}")
        self.send(header)


class Agent:
    """The operations, their configuration and every live session."""

    def __init__(self, config: AgentConfig | None = None) -> None:
        self.config = config or AgentConfig()
        tree = files.Tree(self.config.workspace_root)
        self.secrets = guest_secrets.SecretStore(guest_secrets.secrets_dir(self.config))
        self.shells = shells.Shells(tree, secrets=self.secrets)
        self.ops: dict[str, Callable[[Call, Params], Params]] = {
            "ping": self._ping,
            "exec": lambda call, params: commands.exec_op(call, params, self.secrets),
            "configure": lambda call, params: configure(self.config, params),
            "sync": self._sync,
            "shutdown": self._shutdown,
            **files.operations(tree),
            **archives.operations(tree),
            "patch.apply": lambda call, params: patches.apply_patch(tree, call, params),
            **self.shells.operations(),
            **services.operations(self.config, self.secrets),
            **self.secrets.operations(),
        }
        # Operations that read the request's input (``in`` frames); see frames.py.
        self.input_ops = frozenset(
            {"file.write", "tar.extract", "tree.manifest", "patch.apply", "secrets.put"}
        )
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
        """Cancel every request of every session (their process groups die with them), then
        close every shell."""
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close()
        self.shells.close_all()

    def _ping(self, call: Call, params: Params) -> Params:
        ops.check_keys(params, ())
        return {"pong": True, "time": time.time(), "time_ns": time.time_ns()}

    def _sync(self, call: Call, params: Params) -> Params:
        ops.check_keys(params, ())
        os.sync()
        return {}

    def _shutdown(self, call: Call, params: Params) -> Params:
        ops.check_keys(params, {"action"})
        action = params.get("action", "poweroff")
        if action not in REBOOT_CMDS:
            raise ops.ParamError("action must be poweroff or reboot")
        os.sync()
        # After the answer is sent: the host should learn the request succeeded.
        call.after = lambda: self.config.power(action)
        return {"action": action}


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


def find_serial_port(name: str = frames.SERIAL_PORT_NAME) -> str | None:
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
            address = (socket.VMADDR_CID_ANY, frames.AGENT_VSOCK_PORT)
            _listen_forever(agent, socket.AF_VSOCK, address)
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
