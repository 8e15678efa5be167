"""Host side of the guest protocol: one connection to a guest agent, many concurrent requests.

The guest is hostile: every frame and result it sends is validated here, and anything
malformed closes the connection with a GuestError.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from pyro_mcp.errors import (
    GuestError,
    InvalidArgumentError,
    NotFoundError,
    PyroError,
    PyroTimeoutError,
)
from pyro_mcp.guest import protocol
from pyro_mcp.host.unix import connect_unix

OutputCallback = Callable[[str, bytes], None]

EXEC_MARGIN = 10.0
DEFAULT_TIMEOUT = 10.0
_CLOSED_HINT = "the VM has probably stopped; check its state and console log"
_VERSION_HINT = "the environment's agent and this pyro-mcp differ; re-pull the environment"
_MAX_GUEST_TEXT = 500
_ATTEMPT_TIMEOUT = 0.5
_RETRY_PAUSE = 0.02


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


def _guest_text(value: object) -> str:
    """Guest-supplied text made safe to show: printable and short."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value)[:_MAX_GUEST_TEXT])
    return text if len(str(value)) <= _MAX_GUEST_TEXT else text + "..."


def _malformed(what: str) -> GuestError:
    return GuestError(f"guest agent sent a malformed {what}", hint="the guest may be compromised")


def _error_from_guest(op: str, error: dict[str, Any]) -> PyroError:
    code, message = _guest_text(error["code"]), _guest_text(error["message"])
    text = f"guest {op} failed: {message}"
    if code == protocol.ERR_INVALID_ARGUMENT:
        return InvalidArgumentError(text, guest_code=code)
    if code == protocol.ERR_NOT_FOUND:
        return NotFoundError(text, guest_code=code)
    if code == protocol.ERR_VERSION_MISMATCH:
        return GuestError(text, hint=_VERSION_HINT, guest_code=code)
    return GuestError(text, guest_code=code)


class _Waiter:
    """A request in flight: its output so far and, once answered, its outcome."""

    def __init__(
        self,
        op: str,
        parse: Callable[[_Waiter, dict[str, Any]], Any],
        on_output: OutputCallback | None,
        max_output: int,
        keep: bool,
    ) -> None:
        self.op = op
        self.parse = parse
        self.on_output = on_output
        self.max_output = max_output
        self.keep = keep
        self.output = {name: bytearray() for name in protocol.STREAMS}
        self.received = dict.fromkeys(protocol.STREAMS, 0)
        self.done = threading.Event()
        self.value: Any = None
        self.failure: BaseException | None = None

    def take_output(self, stream: str, data: bytes) -> BaseException | None:
        """Record a chunk; returns the callback's exception, if it raised."""
        self.received[stream] += len(data)
        if self.received[stream] > self.max_output:
            raise _malformed(f"{self.op} output (more than {self.max_output} bytes on {stream})")
        if self.keep:
            self.output[stream] += data
        if self.on_output is None or self.failure is not None:
            return None
        try:
            self.on_output(stream, data)
        except Exception as exc:
            self.failure = exc
            return exc
        return None

    def resolve(self, value: Any = None, failure: BaseException | None = None) -> None:
        if self.failure is None:
            self.value, self.failure = value, failure
        self.done.set()


def _parse_plain(waiter: _Waiter, result: dict[str, Any]) -> dict[str, Any]:
    return result


def _field(result: dict[str, Any], key: str, kind: type) -> Any:
    value = result.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _malformed(f"result ({key} should be {kind.__name__})")
    return value


def _parse_exec(waiter: _Waiter, result: dict[str, Any]) -> ExecResult:
    code = _field(result, "exit_code", int)
    duration = _field(result, "duration_ms", int)
    if not 0 <= code <= 255 or duration < 0:
        raise _malformed("exec result (exit_code or duration_ms out of range)")
    for stream in protocol.STREAMS:
        if _field(result, f"{stream}_bytes", int) != waiter.received[stream]:
            raise _malformed(f"exec result ({stream}_bytes disagrees with the output received)")
    return ExecResult(
        exit_code=code,
        stdout=waiter.output["stdout"].decode("utf-8", errors="replace"),
        stderr=waiter.output["stderr"].decode("utf-8", errors="replace"),
        stdout_truncated=_field(result, "stdout_truncated", bool),
        stderr_truncated=_field(result, "stderr_truncated", bool),
        duration_ms=duration,
        timed_out=_field(result, "timed_out", bool),
        cancelled=_field(result, "cancelled", bool),
    )


def _parse_hello(waiter: _Waiter, result: dict[str, Any]) -> AgentInfo:
    version = _field(result, "protocol", int)
    agent_version = _field(result, "agent_version", str)
    ops = _field(result, "ops", list)
    if len(agent_version) > 64 or len(ops) > 256 or not all(isinstance(o, str) for o in ops):
        raise _malformed("hello result")
    if version != protocol.PROTOCOL_VERSION:
        raise GuestError(
            f"guest agent speaks protocol {version}, this host speaks {protocol.PROTOCOL_VERSION}",
            hint=_VERSION_HINT,
        )
    return AgentInfo(version, agent_version, tuple(ops))


class GuestClient:
    """A connection to one guest agent; thread-safe, many requests may run at once."""

    def __init__(self, sock: socket.socket, *, label: str = "guest agent") -> None:
        sock.settimeout(None)
        self._sock = sock
        self._label = label
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Waiter] = {}
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
        port: int = protocol.AGENT_VSOCK_PORT,
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
        params = {"protocol": protocol.PROTOCOL_VERSION}
        info: AgentInfo = self._call("hello", params, timeout, _parse_hello)
        self.agent_info = info
        return info

    def ping(self, *, timeout: float = DEFAULT_TIMEOUT) -> float:
        """Round trip to the agent; returns the guest's clock (seconds since the epoch)."""
        result = self.request("ping", {}, timeout=timeout)
        stamp = result.get("time")
        if result.get("pong") is not True or not isinstance(stamp, (int, float)):
            raise self._violation(_malformed("ping result"))
        return float(stamp)

    def exec(
        self,
        argv: list[str] | None = None,
        command: str | None = None,
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float,
        max_output: int = protocol.DEFAULT_MAX_OUTPUT,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        """Run argv (or `command` through ``sh -lc``) in the guest; timeout is in seconds.

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
        _validate(protocol.parse_exec, params)
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
        _validate(protocol.parse_configure, params)
        result = self.request("configure", params, timeout=timeout)
        applied = result.get("applied")
        if not isinstance(applied, list) or not all(isinstance(a, str) for a in applied):
            raise self._violation(_malformed("configure result"))
        return [_guest_text(a) for a in applied]

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
            op, params, timeout, _parse_plain, on_output, protocol.MAX_OUTPUT_LIMIT, keep=False
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
        parse: Callable[[_Waiter, dict[str, Any]], Any],
        on_output: OutputCallback | None = None,
        max_output: int = 0,
        *,
        keep: bool = True,
    ) -> Any:
        waiter = _Waiter(op, parse, on_output, max_output, keep)
        rid = next(self._ids)
        try:
            frame = protocol.encode_frame(protocol.req_header(rid, op, params))
        except protocol.FrameError as exc:
            raise InvalidArgumentError(f"cannot send {op} to the guest: {exc}") from None
        with self._lock:
            if self._failure is not None:
                raise self._failure
            self._pending[rid] = waiter
        self._send(frame)
        if not waiter.done.wait(timeout):
            self._abandon(rid)
            raise PyroTimeoutError(
                f"guest agent did not answer {op} within {timeout:g} s",
                hint="the guest may be overloaded or hung; the request was cancelled",
            )
        if waiter.failure is not None:
            raise waiter.failure
        return waiter.value

    def _abandon(self, rid: int) -> None:
        with self._lock:
            self._pending.pop(rid, None)
        with contextlib.suppress(GuestError):
            self._send(protocol.encode_frame(protocol.cancel_header(rid)))

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self._sock.sendall(data)
            except OSError as exc:
                raise self._violation(self._closed_error()) from exc

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
        reader = protocol.FrameReader(self._sock)
        error = self._closed_error()
        try:
            while (frame := reader.read_frame()) is not None:
                self._dispatch(frame)
        except protocol.FrameError as exc:
            error = _malformed(f"frame ({_guest_text(exc)})")
        except GuestError as exc:
            error = exc
        except OSError:
            pass
        except Exception as exc:  # a bug here must not leave requests waiting forever
            error = GuestError(f"{self._label} reader failed: {exc!r}")
        self._violation(error)

    def _dispatch(self, frame: protocol.Frame) -> None:
        kind, rid, header = frame.type, frame.id, frame.header
        if kind == protocol.RES and rid == 0:
            message = _guest_text(header.get("error", {}).get("message", "no reason given"))
            raise GuestError(f"{self._label} dropped the connection: {message}")
        if kind not in (protocol.OUT, protocol.RES):
            raise _malformed(f"frame (a guest may not send {kind} frames)")
        with self._lock:
            waiter = (
                self._pending.get(rid) if kind == protocol.OUT else self._pending.pop(rid, None)
            )
        if waiter is None:
            return  # a request we gave up on; its late frames are harmless
        if kind == protocol.OUT:
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
            waiter.resolve(failure=_error_from_guest(waiter.op, header["error"]))


def _validate(parse: Callable[[dict[str, Any]], object], params: dict[str, Any]) -> None:
    """Apply the agent's own parameter rules before a round trip."""
    try:
        parse(params)
    except protocol.ParamError as exc:
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
