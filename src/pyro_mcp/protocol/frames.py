"""Guest protocol: the framing spoken between the host and the guest agent.

This module is shared by both sides and runs inside the guest, so it stays stdlib-only and
Python 3.11 compatible, and imports nothing from pyro_mcp.

Wire format (one byte stream, either direction)::

    frame  = prefix header body
    prefix = u32 header_len, u32 body_len      (big-endian, 8 bytes)
    header = UTF-8 JSON object, header_len <= MAX_HEADER_BYTES (64 KiB)
    body   = raw bytes,         body_len   <= MAX_BODY_BYTES   (1 MiB)

A frame breaking a limit, or whose header is not a valid header, is a protocol error: the
reader raises FrameError and the connection is dropped.

Every header has ``id`` (an int chosen by the requester; 0 for connection-level frames) and
``t``, the frame type:

- ``req``: a request, ``{"id", "t": "req", "op": str, "params": {...}}``.
- ``out``: streamed output of a request, ``{"id", "t": "out", "stream": S}`` with S one of
  ``stdout``/``stderr`` (exec) or ``data`` (file contents, archives, JSON-lines listings); the
  body holds the bytes.
- ``res``: the final answer, ``{"id", "t": "res", "ok": true, "result": {...}}`` or
  ``{"id", "t": "res", "ok": false, "error": {"code": str, "message": str}}``. A ``res`` with
  id 0 is a connection-level error sent just before the agent drops the connection.
- ``cancel``: ``{"id", "t": "cancel"}``, the requester gives up on request ``id``.
- ``in``: ``{"id", "t": "in"}``, input of request ``id`` flowing host -> guest (a file to
  write, an archive to extract, a patch); the body holds the bytes and an empty body marks the
  end of the input. Only operations that take input read it (file.write, tar.extract,
  patch.apply, tree.manifest with ``since``); ``in`` frames for any other request, or for one
  that already ended, are dropped. The agent queues a bounded amount per request
  (INPUT_QUEUE_BYTES) and stops reading the connection while that queue is full: that is the
  flow control, so the requester must keep reading frames while it sends input.

One connection carries many concurrent requests; their frames interleave, but a frame is
never split. The first request on a connection must be ``hello`` with
``{"protocol": PROTOCOL_VERSION}``; the agent answers ``{"protocol", "agent_version", "ops"}``
or refuses a different major version with error code ``version_mismatch``.

exec output never travels in a header (it could exceed the header limit): it always arrives
as ``out`` frames before the ``res`` frame, live when the request sets ``stream``, in one
burst at the end otherwise. The result counts the bytes it sent in ``stdout_bytes`` and
``stderr_bytes`` so the host can check it received all of them.

The parameters of each request are defined next to this module (exec and configure in ops.py,
the file operations in file_ops.py), so the host rejects a bad request before sending it and
the agent applies the same rules.

Version 2 added the ``in`` frame and the ``data`` output stream: a version-1 peer drops the
connection on either, so the two versions cannot share a connection.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 2
AGENT_VERSION = "0.2.0"
AGENT_VSOCK_PORT = 52
SERIAL_PORT_NAME = "pyro.agent"

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_ID = 2**63 - 1
# Input the agent buffers for one request before it stops reading the connection.
INPUT_QUEUE_BYTES = 4 * MAX_BODY_BYTES

REQ = "req"
OUT = "out"
RES = "res"
CANCEL = "cancel"
IN = "in"
FRAME_TYPES = frozenset({REQ, OUT, RES, CANCEL, IN})
STREAMS = ("stdout", "stderr")  # exec's output
DATA = "data"  # the output of every other operation that streams
OUT_STREAMS = (*STREAMS, DATA)

EXIT_TIMEOUT = 124
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127

ERR_INVALID_ARGUMENT = "invalid_argument"
ERR_NOT_FOUND = "not_found"
ERR_UNKNOWN_OP = "unknown_op"
ERR_VERSION_MISMATCH = "version_mismatch"
ERR_HANDSHAKE_REQUIRED = "handshake_required"
ERR_PROTOCOL = "protocol_error"
ERR_CANCELLED = "cancelled"
ERR_MISSING_TOOL = "missing_tool"
ERR_IO = "io_error"
ERR_INTERNAL = "internal"

_PREFIX = struct.Struct(">II")
PREFIX_SIZE = _PREFIX.size
_READ_CHUNK = 256 * 1024


class FrameError(Exception):
    """A frame broke the wire format; the connection it came from must be dropped."""


class OpError(Exception):
    """Ends a request with an error result carrying `code` (raised by the agent's operations)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Frame:
    """One decoded frame: a validated header and its raw body."""

    header: dict[str, Any]
    body: bytes = b""

    @property
    def id(self) -> int:
        return int(self.header["id"])

    @property
    def type(self) -> str:
        return str(self.header["t"])


def check_header(header: object) -> dict[str, Any]:
    """Return `header` if it is a well-formed frame header, else raise FrameError."""
    if not isinstance(header, dict):
        raise FrameError("frame header is not a JSON object")
    rid, kind = header.get("id"), header.get("t")
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid <= MAX_ID:
        raise FrameError(f"frame id must be an integer in 0..2**63-1, got {rid!r:.40}")
    if kind not in FRAME_TYPES:
        raise FrameError(f"unknown frame type {kind!r:.40}")
    if kind != RES and rid == 0:
        raise FrameError(f"a {kind} frame needs a non-zero id")
    if kind == REQ:
        op = header.get("op")
        if not isinstance(op, str) or not 0 < len(op) <= 64:
            raise FrameError("a req frame needs an op name")
        if not isinstance(header.get("params", {}), dict):
            raise FrameError("req params must be a JSON object")
    elif kind == OUT:
        if header.get("stream") not in OUT_STREAMS:
            raise FrameError(f"out frame stream must be one of {OUT_STREAMS}")
    elif kind == RES:
        _check_result(header)
    return header


def _check_result(header: dict[str, Any]) -> None:
    ok = header.get("ok")
    if not isinstance(ok, bool):
        raise FrameError("res frame needs a boolean ok")
    if ok:
        if not isinstance(header.get("result"), dict):
            raise FrameError("a successful res frame needs a result object")
        return
    error = header.get("error")
    if not isinstance(error, dict):
        raise FrameError("a failed res frame needs an error object")
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, str) or not 0 < len(code) <= 64 or not isinstance(message, str):
        raise FrameError("error needs a short string code and a string message")


def encode_frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    """Serialise one frame; raise FrameError if it is malformed or over a limit."""
    check_header(header)
    try:
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        encoded = raw.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise FrameError(f"frame header cannot be encoded: {exc}") from exc
    if len(encoded) > MAX_HEADER_BYTES:
        raise FrameError(f"frame header is {len(encoded)} bytes, limit {MAX_HEADER_BYTES}")
    if len(body) > MAX_BODY_BYTES:
        raise FrameError(f"frame body is {len(body)} bytes, limit {MAX_BODY_BYTES}")
    return _PREFIX.pack(len(encoded), len(body)) + encoded + bytes(body)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_header(raw: bytes) -> dict[str, Any]:
    """Parse and validate one header; raise FrameError on anything else."""
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and oversized integers alike.
        raise FrameError(f"frame header is not valid JSON: {exc}") from exc
    return check_header(header)


class FrameReader:
    """Reads frames from a blocking socket (recv_into) or raw file (readinto)."""

    def __init__(self, source: Any) -> None:
        reader = getattr(source, "recv_into", None) or getattr(source, "readinto", None)
        if reader is None:
            raise TypeError("source needs recv_into() or readinto()")
        self._read_into = reader
        self._buf = bytearray()
        self._scratch = bytearray(_READ_CHUNK)
        self._view = memoryview(self._scratch)

    def _fill(self, size: int) -> bool:
        """Buffer at least `size` bytes; False at end of stream."""
        while len(self._buf) < size:
            got = self._read_into(self._view)
            if not got:
                return False
            self._buf += self._view[:got]
        return True

    def read_frame(self) -> Frame | None:
        """Return the next frame, or None at a clean end of stream between frames."""
        if not self._fill(PREFIX_SIZE):
            if self._buf:
                raise FrameError("connection closed inside a frame prefix")
            return None
        header_len, body_len = _PREFIX.unpack_from(self._buf)
        if header_len > MAX_HEADER_BYTES:
            raise FrameError(f"frame header of {header_len} bytes exceeds {MAX_HEADER_BYTES}")
        if body_len > MAX_BODY_BYTES:
            raise FrameError(f"frame body of {body_len} bytes exceeds {MAX_BODY_BYTES}")
        total = PREFIX_SIZE + header_len + body_len
        if not self._fill(total):
            raise FrameError("connection closed inside a frame")
        header = decode_header(bytes(self._buf[PREFIX_SIZE : PREFIX_SIZE + header_len]))
        body = bytes(self._buf[PREFIX_SIZE + header_len : total])
        del self._buf[:total]
        return Frame(header, body)


def req_header(rid: int, op: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Header of a request."""
    return {"id": rid, "t": REQ, "op": op, "params": params or {}}


def out_header(rid: int, stream: str) -> dict[str, Any]:
    """Header of one chunk of a request's output; the chunk is the body."""
    return {"id": rid, "t": OUT, "stream": stream}


def ok_header(rid: int, result: dict[str, Any]) -> dict[str, Any]:
    """Header of a successful final result."""
    return {"id": rid, "t": RES, "ok": True, "result": result}


def error_header(rid: int, code: str, message: str) -> dict[str, Any]:
    """Header of a failed final result (rid 0: the whole connection failed)."""
    return {"id": rid, "t": RES, "ok": False, "error": {"code": code, "message": message}}


def cancel_header(rid: int) -> dict[str, Any]:
    """Header asking the agent to abandon request `rid`."""
    return {"id": rid, "t": CANCEL}


def in_header(rid: int) -> dict[str, Any]:
    """Header of one chunk of a request's input; an empty body ends the input."""
    return {"id": rid, "t": IN}
