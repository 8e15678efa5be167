"""Framing and request-parameter rules of the guest protocol."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading

import pytest

from pyro_mcp.protocol import file_ops as pf
from pyro_mcp.protocol import frames, ops
from pyro_mcp.protocol.frames import Frame, FrameError, FrameReader, encode_frame


class Trickle:
    """A byte source that hands out at most `step` bytes per read, like a slow socket."""

    def __init__(self, data: bytes, step: int = 1) -> None:
        self.data, self.step = data, step

    def recv_into(self, buffer: memoryview) -> int:
        size = min(self.step, len(buffer), len(self.data))
        buffer[:size] = self.data[:size]
        self.data = self.data[size:]
        return size


def raw_frame(header: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">II", len(header), len(body)) + header + body


def read_all(data: bytes, step: int = 1 << 20) -> list[Frame]:
    reader = FrameReader(Trickle(data, step))
    frames = []
    while (frame := reader.read_frame()) is not None:
        frames.append(frame)
    return frames


SAMPLES = [
    (frames.req_header(1, "exec", {"argv": ["echo", "ünïcode"], "timeout": 5}), b""),
    (frames.out_header(1, "stdout"), b"\x00\xffbinary\n"),
    (frames.out_header(1, "stderr"), b"x" * frames.MAX_BODY_BYTES),
    (frames.ok_header(1, {"exit_code": 0}), b""),
    (frames.error_header(2, frames.ERR_UNKNOWN_OP, "nope"), b""),
    (frames.error_header(0, frames.ERR_PROTOCOL, "connection-level"), b""),
    (frames.cancel_header(3), b""),
    (frames.out_header(4, "data"), b"file contents"),
    (frames.in_header(4), b"\x00input bytes"),
    (frames.in_header(4), b""),  # the end of request 4's input
]


def test_round_trip_over_a_socket() -> None:
    left, right = socket.socketpair()
    data = b"".join(encode_frame(h, b) for h, b in SAMPLES)

    def write() -> None:
        with right:
            right.sendall(data)

    # More than a socket buffer holds: write from another thread while this one reads.
    writer = threading.Thread(target=write)
    with left:
        writer.start()
        reader = FrameReader(left)
        got = [reader.read_frame() for _ in SAMPLES]
        assert reader.read_frame() is None
        writer.join()
    assert [(f.header, f.body) for f in got if f] == SAMPLES


@pytest.mark.parametrize("step", [1, 3, 7, 4096])
def test_partial_reads_reassemble(step: int) -> None:
    frames = SAMPLES[:2] + SAMPLES[3:]
    data = b"".join(encode_frame(h, b) for h, b in frames)
    got = read_all(data, step)
    assert [(f.header, f.body) for f in got] == frames
    assert got[0].id == 1 and got[0].type == "req"


def test_reads_from_a_raw_file() -> None:
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb", buffering=0) as source:
        os.write(write_fd, encode_frame(frames.cancel_header(9)))
        os.close(write_fd)
        reader = FrameReader(source)
        frame = reader.read_frame()
        assert frame is not None and frame.header == {"id": 9, "t": "cancel"}
        assert reader.read_frame() is None


def test_reader_needs_a_readable_source() -> None:
    with pytest.raises(TypeError):
        FrameReader(object())


@pytest.mark.parametrize("cut", [3, frames.PREFIX_SIZE, frames.PREFIX_SIZE + 5])
def test_end_of_stream_inside_a_frame_is_an_error(cut: int) -> None:
    data = encode_frame(*SAMPLES[1])
    with pytest.raises(FrameError, match="closed inside"):
        read_all(data[:cut])


def test_oversized_lengths_are_refused_before_reading_them() -> None:
    huge_header = struct.pack(">II", frames.MAX_HEADER_BYTES + 1, 0)
    with pytest.raises(FrameError, match="header"):
        read_all(huge_header)
    huge_body = struct.pack(">II", 2, frames.MAX_BODY_BYTES + 1)
    with pytest.raises(FrameError, match="body"):
        read_all(huge_body)


def test_encode_enforces_limits() -> None:
    with pytest.raises(FrameError, match="body"):
        encode_frame(frames.out_header(1, "stdout"), b"x" * (frames.MAX_BODY_BYTES + 1))
    big = frames.ok_header(1, {"text": "x" * frames.MAX_HEADER_BYTES})
    with pytest.raises(FrameError, match="header"):
        encode_frame(big)
    with pytest.raises(FrameError, match="encoded"):
        encode_frame(frames.ok_header(1, {"x": float("nan")}))
    with pytest.raises(FrameError, match="encoded"):
        encode_frame(frames.ok_header(1, {"x": object()}))


BAD_HEADERS = [
    b"[]",
    b"not json",
    b"\xff\xfe",
    b'{"id": NaN, "t": "cancel"}',
    b'{"t": "cancel"}',
    b'{"id": true, "t": "cancel"}',
    b'{"id": -1, "t": "cancel"}',
    b'{"id": 1, "t": "bogus"}',
    b'{"id": 0, "t": "req", "op": "ping"}',
    b'{"id": 1, "t": "req"}',
    b'{"id": 1, "t": "req", "op": "ping", "params": []}',
    b'{"id": 1, "t": "out", "stream": "stdin"}',
    b'{"id": 0, "t": "in"}',
    b'{"id": -3, "t": "in"}',
    b'{"id": 1, "t": "res"}',
    b'{"id": 1, "t": "res", "ok": true}',
    b'{"id": 1, "t": "res", "ok": false, "error": {"code": 1, "message": "x"}}',
    b"[" * 60000,
    b'{"id": 1' + b"0" * 5000 + b', "t": "cancel"}',
]


@pytest.mark.parametrize("header", BAD_HEADERS)
def test_malformed_headers_are_frame_errors(header: bytes) -> None:
    with pytest.raises(FrameError):
        read_all(raw_frame(header))


def test_header_is_compact_utf8_json() -> None:
    data = encode_frame(frames.req_header(5, "exec", {"command": "é"}))
    header_len, body_len = struct.unpack(">II", data[:8])
    assert body_len == 0
    assert json.loads(data[8 : 8 + header_len].decode()) == {
        "id": 5,
        "t": "req",
        "op": "exec",
        "params": {"command": "é"},
    }
    assert "é".encode() in data


# --- request parameters ---------------------------------------------------------------------


def test_parse_exec_argv_and_defaults() -> None:
    spec = ops.parse_exec({"argv": ["ls", "-l"], "timeout": 3})
    assert spec.argv == ["ls", "-l"]
    assert spec.env == ops.DEFAULT_EXEC_ENV
    assert (spec.cwd, spec.timeout, spec.max_output, spec.stream) == (
        "/",
        3.0,
        ops.DEFAULT_MAX_OUTPUT,
        False,
    )


def test_parse_exec_command_env_and_cwd() -> None:
    spec = ops.parse_exec(
        {"command": "echo hi", "timeout": 0.5, "env": {"A": "1", "PATH": "/x"}, "cwd": "/tmp"}
    )
    assert spec.argv == ["/bin/sh", "-lc", "echo hi"]
    assert spec.env["A"] == "1" and spec.env["PATH"] == "/x" and spec.env["HOME"] == "/root"
    assert spec.cwd == "/tmp"


@pytest.mark.parametrize(
    "params",
    [
        {"timeout": 1},
        {"argv": ["a"], "command": "a", "timeout": 1},
        {"argv": [], "timeout": 1},
        {"argv": "ls", "timeout": 1},
        {"argv": ["a\0b"], "timeout": 1},
        {"command": "", "timeout": 1},
        {"argv": ["ls"]},
        {"argv": ["ls"], "timeout": 0},
        {"argv": ["ls"], "timeout": True},
        {"argv": ["ls"], "timeout": float("inf")},
        {"argv": ["ls"], "timeout": 1, "cwd": "relative"},
        {"argv": ["ls"], "timeout": 1, "env": {"A=B": "x"}},
        {"argv": ["ls"], "timeout": 1, "env": {"A": 1}},
        {"argv": ["ls"], "timeout": 1, "max_output": -1},
        {"argv": ["ls"], "timeout": 1, "max_output": ops.MAX_OUTPUT_LIMIT + 1},
        {"argv": ["ls"], "timeout": 1, "stream": "yes"},
        {"argv": ["ls"], "timeout": 1, "shell": True},
    ],
)
def test_parse_exec_rejects(params: dict[str, object]) -> None:
    with pytest.raises(ops.ParamError):
        ops.parse_exec(params)


def test_parse_configure() -> None:
    ident = ops.parse_configure(
        {"hostname": "vm-1.local", "machine_id": "ab" * 16, "time_ns": 5, "entropy": "AAEC"}
    )
    assert ident == ops.Identity("vm-1.local", "ab" * 16, 5, b"\x00\x01\x02")
    assert ops.parse_configure({}) == ops.Identity()


@pytest.mark.parametrize(
    "params",
    [
        {"hostname": "-bad"},
        {"hostname": "a" * 64},
        {"hostname": "a b"},
        {"machine_id": "AB" * 16},
        {"machine_id": "ab"},
        {"time_ns": -1},
        {"time_ns": 1.5},
        {"entropy": "***"},
        {"entropy": ""},
        {"entropy": 5},
        {"colour": "blue"},
    ],
)
def test_parse_configure_rejects(params: dict[str, object]) -> None:
    with pytest.raises(ops.ParamError):
        ops.parse_configure(params)


def test_input_frames() -> None:
    data = encode_frame(frames.in_header(7), b"chunk")
    (frame,) = read_all(data)
    assert (frame.id, frame.type, frame.body) == (7, frames.IN, b"chunk")
    assert frame.header == {"id": 7, "t": "in"}
    with pytest.raises(FrameError, match="non-zero id"):
        encode_frame(frames.in_header(0), b"x")
    with pytest.raises(FrameError, match="body"):
        encode_frame(frames.in_header(1), b"x" * (frames.MAX_BODY_BYTES + 1))


# --- workspace parameters (protocol_files) ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("/workspace", ()),
        ("/workspace/", ()),
        ("", ()),
        (".", ()),
        ("a/b", ("a", "b")),
        ("/workspace/a//./b/", ("a", "b")),
        ("./a", ("a",)),
        ("sp ace/ü", ("sp ace", "ü")),
        ("...", ("...",)),
    ],
)
def test_workspace_parts(path: str, parts: tuple[str, ...]) -> None:
    assert pf.workspace_parts(path) == parts
    assert pf.logical(parts) == "/".join(("/workspace", *parts))


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "a/../b",
        "/workspace/..",
        "/etc/passwd",
        "/workspaces/x",
        "/",
        "a\0b",
        "x" * 256,
        "a/" * 2100,
        None,
        5,
    ],
)
def test_workspace_parts_rejects(path: object) -> None:
    with pytest.raises(ops.ParamError):
        pf.workspace_parts(path)


def test_parse_file_params() -> None:
    got = pf.parse_file_params("file.read", {"path": "a", "max_bytes": 10})
    assert got == pf.FileParams(parts=("a",), max_bytes=10)
    assert pf.parse_file_params("file.list", {}).parts == ()
    assert pf.parse_file_params("tar.extract", {"dest": "d"}).parts == ("d",)
    assert pf.parse_file_params("tree.manifest", {"since": True}).since is True
    assert pf.parse_file_params("patch.apply", {}) == pf.FileParams()


@pytest.mark.parametrize(
    ("op", "params"),
    [
        ("file.read", {}),  # the workspace itself is not a file
        ("file.write", {"path": "/workspace"}),
        ("file.delete", {"path": ""}),
        ("file.read", {"path": "a", "max_bytes": -1}),
        ("file.read", {"path": "a", "max_bytes": pf.MAX_READ_BYTES + 1}),
        ("file.read", {"path": "a", "max_bytes": True}),
        ("file.read", {"path": "a", "recursive": True}),
        ("file.list", {"recursive": "yes"}),
        ("file.write", {"path": "a", "create_parents": 1}),
        ("tar.extract", {"path": "a"}),
        ("patch.apply", {"path": "a"}),
    ],
)
def test_parse_file_params_rejects(op: str, params: dict[str, object]) -> None:
    with pytest.raises(ops.ParamError):
        pf.parse_file_params(op, params)


def test_parse_since() -> None:
    assert pf.parse_since(b'{"a/b": [1, 2]}') == {"a/b": (1, 2)}
    for bad in (b"[]", b"{", b'{"a": [1, 2, 3]}', b'{"a": [1, "2"]}', b'{"a": [false, 1]}'):
        with pytest.raises(ops.ParamError):
            pf.parse_since(bad)


def changes(patch: str) -> list[tuple[str, str, str | None]]:
    found = pf.parse_patch(patch)
    return [("/".join(f.parts), f.status, f.source and "/".join(f.source)) for f in found]


def test_parse_patch_plain_unified_diff() -> None:
    patch = (
        "--- a/src/x.py\t2024-01-01 00:00:00\n+++ b/src/x.py\t2024-01-02\n"
        "@@ -1,3 +1,3 @@\n a\n--- not a header: a removed line\n+++ nor this\n c\n"
        "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+n\n"
        "--- a/gone.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-g\n\\ No newline at end of file\n"
    )
    assert changes(patch) == [
        ("src/x.py", "modified", None),
        ("new.txt", "added", None),
        ("gone.txt", "deleted", None),
    ]


def test_parse_patch_git_extended_headers() -> None:
    patch = (
        "diff --git a/empty b/empty\nnew file mode 100644\nindex 0000000..e69de29\n"
        "diff --git a/old name.txt b/new name.txt\nsimilarity index 100%\n"
        "rename from old name.txt\nrename to new name.txt\n"
        'diff --git "a/t\\303\\244b\\tx" "b/t\\303\\244b\\tx"\ndeleted file mode 100644\n'
        "diff --git a/m.sh b/m.sh\nold mode 100644\nnew mode 100755\n"
        "diff --git a/c1 b/c2\nsimilarity index 100%\ncopy from c1\ncopy to c2\n"
        "diff --git a/bin b/bin\nindex 1..2 100644\nGIT binary patch\nliteral 3\nKcmZ?wKm`B-\n\n"
    )
    assert changes(patch) == [
        ("empty", "added", None),
        ("new name.txt", "renamed", "old name.txt"),
        ("täb\tx", "deleted", None),
        ("m.sh", "modified", None),
        ("c2", "added", "c1"),
        ("bin", "modified", None),
    ]


@pytest.mark.parametrize(
    "patch",
    [
        "--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n",
        "--- a/../x\n+++ b/../x\n@@ -1 +1 @@\n-a\n+b\n",
        "--- a/ok\n+++ b/x/../../y\n@@ -1 +1 @@\n-a\n+b\n",
        "diff --git a/x b/y\nrename from x\nrename to ../y\n",
        "diff --git a/x b/x\ncopy from /etc/shadow\ncopy to x\n",
        'diff --git "a/x\n',
        "--- a/x\n+++ b/x\n@@ bogus @@\n",
    ],
)
def test_parse_patch_refuses_paths_leaving_the_workspace(patch: str) -> None:
    with pytest.raises(ops.ParamError):
        pf.parse_patch(patch)


def test_parse_patch_of_text_without_a_diff_is_empty() -> None:
    assert pf.parse_patch("hello\nworld\n") == []
