"""Host side of the guest protocol: one connection to a guest agent, many concurrent requests.

The guest is hostile: every frame and result it sends is validated here, and anything
malformed closes the connection with a GuestError. The workspace operations (files, archives,
manifests, patches) come from client_files.FileOps.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import math
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self

from pyro_mcp.agent_client.base import (
    VERSION_HINT,
    OutputCallback,
    Waiter,
    error_from_guest,
    field,
    guest_text,
    malformed,
)
from pyro_mcp.agent_client.files import FileOps
from pyro_mcp.errors import GuestError, InvalidArgumentError, PyroTimeoutError
from pyro_mcp.host.unix import connect_unix
from pyro_mcp.protocol import frames, ops

__all__ = ["AgentInfo", "ExecResult", "GuestClient", "OutputCallback"]

EXEC_MARGIN = 10.0
DEFAULT_TIMEOUT = 10.0
_CLOSED_HINT = "the VM has probably stopped; check its state and console log"
_STALLED_HINT = "the guest stopped reading its input; the connection was dropped"
# How long a cancel may wait for room on the connection before the connection is given up.
_CANCEL_GRACE = 2.0
_ATTEMPT_TIMEOUT = 0.5
_RETRY_PAUSE = 0.02


class _Lost(Exception):
    """A send found the connection dead; the reader decides what the requests learn."""


@dataclass(frozen=True)
class ExecResult:
    """What a command did in the guest; exit_code 124 with timed_out set on a guest timeout."""

    exit_code: int
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int
    timed_out: bool
    cancelled: bool = False


@dataclass(frozen=True)
class AgentInfo:
    """The agent's answer to hello."""

    protocol: int
    agent_version: str
    ops: tuple[str, ...]


def _parse_plain(waiter: Waiter, result: dict[str, Any]) -> dict[str, Any]:
    return result


def _parse_exec(waiter: Waiter, result: dict[str, Any]) -> ExecResult:
    code = field(result, "exit_code", int)
    duration = field(result, "duration_ms", int)
    if not 0 <= code <= 255 or duration < 0:
        raise malformed("exec result (exit_code or duration_ms out of range)")
    for stream in frames.STREAMS:
        if field(result, f"{stream}_bytes", int) != waiter.received[stream]:
            raise malformed(f"exec result ({stream}_bytes disagrees with the output received)")
    return ExecResult(
        exit_code=code,
        stdout=waiter.output["stdout"].decode("utf-8", errors="replace"),
        stderr=waiter.output["stderr"].decode("utf-8", errors="replace"),
        stdout_truncated=field(result, "stdout_truncated", bool),
        stderr_truncated=field(result, "stderr_truncated", bool),
        duration_ms=duration,
        timed_out=field(result, "timed_out", bool),
        cancelled=field(result, "cancelled", bool),
    )


def _parse_hello(waiter: Waiter, result: dict[str, Any]) -> AgentInfo:
    version = field(result, "protocol", int)
    agent_version = field(result, "agent_version", str)
    ops = field(result, "ops", list)
    if len(agent_version) > 64 or len(ops) > 256 or not all(isinstance(o, str) for o in ops):
        raise malformed("hello result")
    if version != frames.PROTOCOL_VERSION:
        raise GuestError(
            f"guest agent speaks protocol {version}, this host speaks {frames.PROTOCOL_VERSION}",
            hint=VERSION_HINT,
        )
    return AgentInfo(version, agent_version, tuple(ops))


class GuestClient(FileOps):
    """A connection to one guest agent; thread-safe, many requests may run at once."""

    def __init__(self, sock: socket.socket, *, label: str = "guest agent") -> None:
        sock.settimeout(None)
        self._sock = sock
        self._label = label
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, Waiter] = {}
        self._failure: GuestError | None = None
        self.agent_info: AgentInfo | None = None
        self._reader = threading.Thread(target=self._read_loop, name=f"{label} reader", daemon=True)
        self._reader.start()

    # --- connecting -----------------------------------------------------------------------

    @classmethod
    def connect_unix(cls, path: str, *, timeout: float, handshake: bool = True) -> Self:
        """Connect to an agent channel exposed as a UNIX socket (QEMU virtio-serial)."""
        deadline = time.monotonic() + timeout
        sock = _retry_until(deadline, f"the guest agent socket {path}", lambda t: _unix(path, t))
        return cls._ready(sock, deadline, handshake)

    @classmethod
    def connect_firecracker_vsock(
        cls,
        uds_path: str,
        port: int = frames.AGENT_VSOCK_PORT,
        *,
        timeout: float,
        handshake: bool = True,
    ) -> Self:
        """Connect through Firecracker's vsock bridge (``CONNECT <port>`` / ``OK ...``)."""
        deadline = time.monotonic() + timeout
        what = f"guest vsock port {port} through {uds_path}"
        sock = _retry_until(
            deadline, what, lambda t: connect_firecracker_vsock_socket(uds_path, port, t)
        )
        return cls._ready(sock, deadline, handshake)

    @classmethod
    def _ready(cls, sock: socket.socket, deadline: float, handshake: bool) -> Self:
        client = cls(sock)
        if handshake:
            try:
                client.hello(timeout=max(0.1, deadline - time.monotonic()))
            except BaseException:
                client.close()
                raise
        return client

    # --- operations -----------------------------------------------------------------------

    def hello(self, *, timeout: float = DEFAULT_TIMEOUT) -> AgentInfo:
        """Handshake: check the agent speaks our protocol version."""
        params = {"protocol": frames.PROTOCOL_VERSION}
        info: AgentInfo = self._call("hello", params, timeout, _parse_hello)
        self.agent_info = info
        return info

    def ping(self, *, timeout: float = DEFAULT_TIMEOUT) -> float:
        """Round trip to the agent; returns the guest's clock (seconds since the epoch)."""
        result = self.request("ping", {}, timeout=timeout)
        stamp = result.get("time")
        if result.get("pong") is not True or not isinstance(stamp, (int, float)):
            raise self._violation(malformed("ping result"))
        return float(stamp)

    def exec(
        self,
        argv: list[str] | None = None,
        command: str | None = None,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float,
        max_output: int = ops.DEFAULT_MAX_OUTPUT,
        on_output: OutputCallback | None = None,
        secret_env: dict[str, str] | None = None,
    ) -> ExecResult:
        """Run argv (or `command` through ``sh -lc``) in the guest; timeout is in seconds.
        secret_env {SECRET: ENV} maps installed secrets into the command's environment.

        on_output(stream, chunk) runs on the reader thread as output arrives, so keep it quick.
        """
        params: dict[str, Any] = {"timeout": timeout, "max_output": max_output}
        if argv is not None:
            params["argv"] = list(argv)
        if command is not None:
            params["command"] = command
        if env is not None:
            params["env"] = dict(env)
        if cwd is not None:
            params["cwd"] = cwd
        if on_output is not None:
            params["stream"] = True
        if secret_env:
            params["secret_env"] = dict(secret_env)
        _validate(ops.parse_exec, params)
        result: ExecResult = self._call(
            "exec", params, timeout + EXEC_MARGIN, _parse_exec, on_output, max_output
        )
        return result

    def configure(
        self,
        *,
        hostname: str | None = None,
        machine_id: str | None = None,
        time_ns: int | None = None,
        entropy: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[str]:
        """Give a (restored) guest its identity; returns the names of the settings applied."""
        params: dict[str, Any] = {"hostname": hostname, "machine_id": machine_id}
        params["time_ns"] = time_ns
        if entropy is not None:
            params["entropy"] = base64.b64encode(entropy).decode("ascii")
        params = {key: value for key, value in params.items() if value is not None}
        _validate(ops.parse_configure, params)
        result = self.request("configure", params, timeout=timeout)
        applied = result.get("applied")
        if not isinstance(applied, list) or not all(isinstance(a, str) for a in applied):
            raise self._violation(malformed("configure result"))
        return [guest_text(a) for a in applied]

    def sync(self, *, timeout: float = 60.0) -> None:
        """Flush the guest's file systems to its disks."""
        self.request("sync", {}, timeout=timeout)

    def shutdown(self, *, reboot: bool = False, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Sync, then power off (or reboot, which is how Firecracker guests stop)."""
        action = "reboot" if reboot else "poweroff"
        self.request("shutdown", {"action": action}, timeout=timeout)

    def request(
        self,
        op: str,
        params: dict[str, Any],
        *,
        timeout: float,
        on_output: OutputCallback | None = None,
    ) -> dict[str, Any]:
        """Send any request and wait up to `timeout` seconds for its result object.

        Output frames go to on_output (if given) and are not kept.
        """
        result: dict[str, Any] = self._call(
            op,
            params,
            timeout,
            _parse_plain,
            on_output,
            ops.MAX_OUTPUT_LIMIT,
            keep=False,
            streams=frames.OUT_STREAMS,
        )
        return result

    def close(self) -> None:
        """Drop the connection; requests still waiting fail with GuestError."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if threading.current_thread() is not self._reader:
            self._reader.join()
        self._sock.close()

    @property
    def closed(self) -> bool:
        """True once the connection is unusable (closed, lost, or dropped as malformed)."""
        return self._failure is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- machinery ------------------------------------------------------------------------

    def _call(
        self,
        op: str,
        params: dict[str, Any],
        timeout: float,
        parse: Callable[[Waiter, dict[str, Any]], Any],
        on_output: OutputCallback | None = None,
        max_output: int = 0,
        *,
        keep: bool = True,
        streams: tuple[str, ...] = frames.STREAMS,
        source: Iterable[bytes] | None = None,
    ) -> Any:
        """Send one request (then its input, if `source` is given) and wait for its outcome;
        `timeout` covers the whole exchange, input included."""
        deadline = time.monotonic() + timeout
        waiter = Waiter(op, parse, on_output, max_output, keep, streams)
        rid = next(self._ids)
        try:
            frame = frames.encode_frame(frames.req_header(rid, op, params))
        except frames.FrameError as exc:
            raise InvalidArgumentError(f"cannot send {op} to the guest: {exc}") from None
        with self._lock:
            if self._failure is not None:
                raise self._failure
            self._pending[rid] = waiter
        try:
            self._send(frame)
            if source is not None:
                self._send_input(rid, waiter, source, deadline)
        except _Lost:
            # The reader settles the request from whatever the guest sent before it went.
            if threading.current_thread() is not self._reader:
                self._reader.join(max(0.0, deadline - time.monotonic()))
        if not waiter.done.wait(max(0.0, deadline - time.monotonic())):
            self._abandon(rid)
            raise PyroTimeoutError(
                f"guest agent did not answer {op} within {timeout:g} s",
                hint="the guest may be overloaded or hung; the request was cancelled",
            )
        if waiter.failure is not None:
            raise waiter.failure
        return waiter.value

    def _send_input(
        self, rid: int, waiter: Waiter, source: Iterable[bytes], deadline: float
    ) -> None:
        """Stream `source` as ``in`` frames, then the empty one that ends it. Stops early when
        the request is already answered (an error needs no more input); an input that fails
        (or a send that times out) cancels the request."""
        try:
            for piece in source:
                for start in range(0, len(piece), frames.MAX_BODY_BYTES):
                    if waiter.done.is_set():
                        return
                    body = bytes(piece[start : start + frames.MAX_BODY_BYTES])
                    self._send(frames.encode_frame(frames.in_header(rid), body), deadline)
            if not waiter.done.is_set():
                self._send(frames.encode_frame(frames.in_header(rid)), deadline)
        except _Lost:
            raise  # the request stays pending: an answer may already be on its way in
        except BaseException:
            self._abandon(rid)
            raise

    def _abandon(self, rid: int) -> None:
        with self._lock:
            self._pending.pop(rid, None)
        with contextlib.suppress(_Lost, PyroTimeoutError):
            frame = frames.encode_frame(frames.cancel_header(rid))
            self._send(frame, time.monotonic() + _CANCEL_GRACE)

    def _send(self, data: bytes, deadline: float | None = None) -> None:
        """Send one whole frame; with a deadline, give up (PyroTimeoutError) when the guest
        does not take it in time. A dead connection raises _Lost."""
        with self._send_lock:
            try:
                if deadline is None:
                    self._sock.sendall(data)
                else:
                    self._send_by(data, deadline)
            except OSError as exc:
                # Not failed here: frames the guest sent before it went may still be unread,
                # and its answer (or its malformed answer) must win over "closed". Hanging up
                # lets the reader take what arrived, then end and fail the rest.
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
                raise _Lost from exc

    def _send_by(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        poller = select.poll()
        poller.register(self._sock, select.POLLOUT)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(math.ceil(remaining * 1000)):
                if len(view) < len(data):
                    # Half a frame is on the wire: nothing else can follow it any more.
                    self._violation(GuestError(f"{self._label} stalled", hint=_STALLED_HINT))
                raise PyroTimeoutError(f"{self._label} stopped taking input", hint=_STALLED_HINT)
            try:
                sent = self._sock.send(view, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            view = view[sent:]

    def _closed_error(self) -> GuestError:
        return GuestError(f"{self._label} connection closed", hint=_CLOSED_HINT)

    def _violation(self, error: GuestError) -> GuestError:
        """Fail the whole connection with `error` (a hostile or dead guest) and return it."""
        self._fail(error)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        return error

    def _fail(self, error: GuestError) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = error
            pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.resolve(failure=self._failure)

    def _read_loop(self) -> None:
        reader = frames.FrameReader(self._sock)
        error = self._closed_error()
        try:
            while (frame := reader.read_frame()) is not None:
                self._dispatch(frame)
        except frames.FrameError as exc:
            error = malformed(f"frame ({guest_text(exc)})")
        except GuestError as exc:
            error = exc
        except OSError:
            pass
        except Exception as exc:  # a bug here must not leave requests waiting forever
            error = GuestError(f"{self._label} reader failed: {exc!r}")
        self._violation(error)

    def _dispatch(self, frame: frames.Frame) -> None:
        kind, rid, header = frame.type, frame.id, frame.header
        if kind == frames.RES and rid == 0:
            message = guest_text(header.get("error", {}).get("message", "no reason given"))
            raise GuestError(f"{self._label} dropped the connection: {message}")
        if kind not in (frames.OUT, frames.RES):
            raise malformed(f"frame (a guest may not send {kind} frames)")
        with self._lock:
            waiter = self._pending.get(rid) if kind == frames.OUT else self._pending.pop(rid, None)
        if waiter is None:
            return  # a request we gave up on; its late frames are harmless
        if kind == frames.OUT:
            if waiter.take_output(header["stream"], frame.body) is not None:
                self._abandon(rid)
                waiter.done.set()
            return
        if header["ok"]:
            try:
                waiter.resolve(waiter.parse(waiter, header["result"]))
            except GuestError as exc:
                waiter.resolve(failure=exc)
                raise
        else:
            waiter.resolve(failure=error_from_guest(waiter.op, header["error"]))


def _validate(parse: Callable[[dict[str, Any]], object], params: dict[str, Any]) -> None:
    """Apply the agent's own parameter rules before a round trip."""
    try:
        parse(params)
    except ops.ParamError as exc:
        raise InvalidArgumentError(str(exc)) from None


def _unix(path: str, timeout: float) -> socket.socket:
    return connect_unix(path, timeout)


def connect_firecracker_vsock_socket(uds_path: str, port: int, timeout: float) -> socket.socket:
    """One attempt at Firecracker's handshake; it may stall while the guest has no driver."""
    sock = _unix(uds_path, timeout)
    try:
        sock.sendall(f"CONNECT {port}\n".encode("ascii"))
        line = bytearray()
        # Byte by byte: whatever follows the line belongs to the agent.
        while not line.endswith(b"\n") and len(line) < 64:
            byte = sock.recv(1)
            if not byte:
                raise ConnectionRefusedError("vsock bridge closed the connection")
            line += byte
        if not line.startswith(b"OK "):
            raise ConnectionRefusedError(f"vsock bridge answered {bytes(line)!r:.80}")
    except BaseException:
        sock.close()
        raise
    return sock


def _retry_until(
    deadline: float, what: str, attempt: Callable[[float], socket.socket]
) -> socket.socket:
    """Repeat `attempt` (each with its own short timeout) until it succeeds or time runs out."""
    last: OSError | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PyroTimeoutError(
                f"could not reach {what}: {last or 'timed out'}",
                hint="the VM may still be booting or may have failed; check its console log",
            )
        try:
            return attempt(min(_ATTEMPT_TIMEOUT, remaining))
        except OSError as exc:
            last = exc
        time.sleep(min(_RETRY_PAUSE, max(0.0, deadline - time.monotonic())))
