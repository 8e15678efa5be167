"""The workspace operations of the guest agent, run as a real process with --sandbox-root.

The workspace is <sandbox>/workspace on the host; "outside" is a directory next to it that no
operation may read, write or reveal. Most tests go through GuestClient; the ones that check the
guest's own refusals send raw requests (GuestClient.request skips the host-side checks).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from framework.agent_harness import WAIT, short_workdir, start_agent, stop_agent
from pyro_mcp.agent import server as agent_module
from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.errors import GuestError, InvalidArgumentError, NotFoundError
from pyro_mcp.protocol import file_ops as pf
from pyro_mcp.protocol import frames, ops
from pyro_mcp.protocol.frames import FrameReader, encode_frame

PY311 = "/root/.pyenv/versions/3.11.7/bin/python3.11"
HAVE_GIT = shutil.which("git") is not None
needs_git = pytest.mark.skipif(not HAVE_GIT, reason="git is not installed on this host")


class Sandbox:
    """An agent process whose workspace is `ws`, with `outside` next to it."""

    def __init__(self, workdir: Path, python: str | None = None) -> None:
        self.outside = workdir / "outside"
        self.outside.mkdir()
        (self.outside / "secret").write_text("top secret\n")
        self.agent = start_agent(workdir, python)
        self.ws = self.agent.root / "workspace"
        self.socket_path = self.agent.socket_path
        self.proc = self.agent.proc
        self.log = self.agent.log

    def stop(self) -> None:
        stop_agent(self.agent, forbid_traceback=True)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with short_workdir("pyro-files-") as path:
        yield path


@pytest.fixture
def box(workdir: Path) -> Iterator[Sandbox]:
    sandbox = Sandbox(workdir)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def client(box: Sandbox) -> Iterator[GuestClient]:
    with GuestClient.connect_unix(box.socket_path, timeout=WAIT) as connected:
        yield connected


@pytest.fixture
def ws(box: Sandbox) -> Path:
    return box.ws


def snapshot(*roots: Path) -> dict[str, tuple[str, int, str]]:
    """Everything below the roots: (type, mode, content or link target), by path."""
    found: dict[str, tuple[str, int, str]] = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[str(path)] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[str(path)] = ("dir", stat.S_IMODE(st.st_mode), "")
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path)] = ("file", stat.S_IMODE(st.st_mode), digest)
    return found


def guest_refuses(client: GuestClient, op: str, params: dict[str, Any], data: bytes = b"") -> str:
    """Send a request straight to the guest (no host-side checks) and return its refusal."""
    takes_input = op in ("file.write", "tar.extract", "patch.apply") or params.get("since")
    source = [data] if takes_input else None
    with pytest.raises((InvalidArgumentError, NotFoundError)) as caught:
        client._call(
            op,
            params,
            WAIT,
            lambda w, r: r,
            source=source,
            streams=(frames.DATA,),
            max_output=1 << 20,
        )
    return str(caught.value)


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> Any:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


# --- paths ---------------------------------------------------------------------------------

ESCAPES = ["../outside/secret", "/etc/passwd", "/workspace/../outside/secret", "a/../../x"]


@pytest.mark.parametrize("path", ESCAPES)
def test_path_escapes_are_refused_by_host_and_guest(
    client: GuestClient, box: Sandbox, path: str
) -> None:
    before = snapshot(box.ws, box.outside)
    host_side: list[Callable[[], object]] = [
        lambda: client.read_file(path),
        lambda: client.write_file(path, b"x"),
        lambda: client.list_files(path),
        lambda: client.delete_file(path),
        lambda: client.create_tar(path, lambda chunk: None),
        lambda: client.extract_tar(b"", dest=path),
        lambda: client.manifest(path),
    ]
    for attempt in host_side:
        with pytest.raises(InvalidArgumentError):
            attempt()
    for op, key in [
        ("file.read", "path"),
        ("file.write", "path"),
        ("file.list", "path"),
        ("file.delete", "path"),
        ("tar.create", "path"),
        ("tar.extract", "dest"),
        ("tree.manifest", "path"),
    ]:
        message = guest_refuses(client, op, {key: path})
        assert "is outside /workspace" in message or "contains '..'" in message
    assert snapshot(box.ws, box.outside) == before


def test_symlinks_leading_out_are_refused(client: GuestClient, box: Sandbox, ws: Path) -> None:
    (ws / "dirlink").symlink_to(box.outside)
    (ws / "filelink").symlink_to(box.outside / "secret")
    before = snapshot(box.ws, box.outside)
    for path in ("dirlink/secret", "filelink"):
        with pytest.raises(InvalidArgumentError, match=r"symlink|symbolic link|leads outside"):
            client.read_file(path)
    for attempt in [
        lambda: client.list_files("dirlink"),
        lambda: client.manifest("dirlink"),
        lambda: client.create_tar("dirlink/secret", lambda chunk: None),
        lambda: client.delete_file("dirlink/secret"),
        lambda: client.write_file("dirlink/new", b"x"),
        lambda: client.write_file("filelink", b"overwritten"),
        lambda: client.extract_tar(make_tar([(member("x"), b"x")]), dest="dirlink"),
        lambda: client.extract_tar(make_tar([(member("dirlink/x"), b"x")])),
    ]:
        with pytest.raises(InvalidArgumentError):
            attempt()
    assert snapshot(box.ws, box.outside) == before
    # Deleting a link removes the link, never what it points to.
    assert client.delete_file("filelink") == "symlink"
    assert (box.outside / "secret").read_text() == "top secret\n"


def test_symlinks_inside_the_workspace_are_followed_for_reading(
    client: GuestClient, ws: Path
) -> None:
    (ws / "real").mkdir()
    (ws / "real/f.txt").write_text("inside\n")
    (ws / "alias").symlink_to("real")
    (ws / "abs-alias").symlink_to(ws / "real")
    assert client.read_file("alias/f.txt").content == b"inside\n"
    assert client.read_file("abs-alias/f.txt").content == b"inside\n"
    assert [e.path for e in client.list_files("alias").entries] == ["/workspace/alias/f.txt"]
    # Writes refuse any symbolic link on the way, even one that stays inside.
    with pytest.raises(InvalidArgumentError, match="symbolic link"):
        client.write_file("alias/g.txt", b"x")


# --- read, write, delete, list ---------------------------------------------------------------


def test_read_of_a_big_file_is_truncated_not_refused(client: GuestClient, ws: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    (ws / "big.bin").write_bytes(data)
    got = client.read_file("big.bin", max_bytes=1024 * 1024)
    assert got.content == data[: 1024 * 1024] and got.truncated
    assert got.size_bytes == len(data) and got.path == "/workspace/big.bin"
    whole = client.read_file("big.bin", max_bytes=pf.MAX_READ_BYTES)
    assert whole.content == data and not whole.truncated
    assert client.read_file("big.bin", max_bytes=0).truncated
    (ws / "empty").write_bytes(b"")
    assert client.read_file("empty", max_bytes=0) == client.read_file("empty")
    assert not client.read_file("empty").truncated


def test_read_refuses_directories_and_special_files(client: GuestClient, ws: Path) -> None:
    (ws / "dir").mkdir()
    os.mkfifo(ws / "fifo")
    with pytest.raises(InvalidArgumentError, match="directory"):
        client.read_file("dir")
    with pytest.raises(InvalidArgumentError, match="other, not a file"):
        client.read_file("fifo")  # and it does not hang opening the FIFO
    with pytest.raises(NotFoundError, match="/workspace/missing does not exist"):
        client.read_file("missing")
    with pytest.raises(InvalidArgumentError):
        client.read_file("/workspace")


def test_write_is_atomic_and_keeps_the_mode(client: GuestClient, ws: Path, box: Sandbox) -> None:
    result = client.write_file("new/dir/f.txt", b"one\n")
    assert result.bytes_written == result.size_bytes == 4
    target = ws / "new/dir/f.txt"
    assert target.read_bytes() == b"one\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    target.chmod(0o750)
    old_inode = target.stat().st_ino
    client.write_file("/workspace/new/dir/f.txt", b"two\n")
    assert target.read_bytes() == b"two\n" and stat.S_IMODE(target.stat().st_mode) == 0o750
    assert target.stat().st_ino != old_inode  # a new file renamed over the old one
    # A hard link to a file outside is replaced, never written through.
    os.link(box.outside / "secret", ws / "hardlink")
    client.write_file("hardlink", b"replaced\n")
    assert (box.outside / "secret").read_text() == "top secret\n"
    client.write_file("empty", b"")
    assert (ws / "empty").read_bytes() == b""
    assert sorted(p.name for p in (ws / "new/dir").iterdir()) == ["f.txt"]  # no temp files


def test_write_refusals(client: GuestClient, ws: Path) -> None:
    (ws / "dir").mkdir()
    with pytest.raises(InvalidArgumentError, match="is a directory"):
        client.write_file("dir", b"x")
    with pytest.raises(NotFoundError):
        client.write_file("no/parent.txt", b"x", create_parents=False)
    (ws / "file").write_text("x")
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        client.write_file("file/below", b"x")
    assert not (ws / "no").exists()


def test_a_cancelled_write_changes_nothing(box: Sandbox, ws: Path) -> None:
    (ws / "f.txt").write_text("original\n")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(box.socket_path)
        sock.settimeout(WAIT)
        reader = FrameReader(sock)
        sock.sendall(
            encode_frame(frames.req_header(1, "hello", {"protocol": frames.PROTOCOL_VERSION}))
        )
        assert reader.read_frame() is not None
        sock.sendall(encode_frame(frames.req_header(2, "file.write", {"path": "f.txt"})))
        sock.sendall(encode_frame(frames.in_header(2), b"partial new content"))
        sock.sendall(encode_frame(frames.cancel_header(2)))
        frame = reader.read_frame()
        assert frame is not None and frame.header["error"]["code"] == frames.ERR_CANCELLED
        # Input after the end of a request is dropped; the connection stays usable.
        sock.sendall(encode_frame(frames.in_header(2), b"late"))
        sock.sendall(encode_frame(frames.req_header(3, "ping")))
        frame = reader.read_frame()
        assert frame is not None and frame.id == 3 and frame.header["ok"]
    assert (ws / "f.txt").read_text() == "original\n"
    assert [p.name for p in ws.iterdir()] == ["f.txt"]


def test_input_larger_than_the_agents_queue_flows(client: GuestClient, ws: Path) -> None:
    data = os.urandom(frames.INPUT_QUEUE_BYTES * 3 + 17)
    pieces = [data[i : i + 300_000] for i in range(0, len(data), 300_000)]
    assert client.write_file("big", b"".join(pieces)).bytes_written == len(data)
    assert (ws / "big").read_bytes() == data


def test_an_early_error_stops_the_input(client: GuestClient) -> None:
    """The guest refuses before reading any input: the client stops streaming at once."""
    sent = []

    def endless() -> Iterator[bytes]:
        while True:
            sent.append(1)
            yield bytes(1024 * 1024)

    params = {"path": "no/such/f", "create_parents": False}
    with pytest.raises(NotFoundError):
        client._call("file.write", params, WAIT, lambda w, r: r, source=endless())
    assert len(sent) < 64  # a few chunks were in flight, not an endless stream
    assert client.ping()


def test_delete(client: GuestClient, ws: Path) -> None:
    (ws / "d/sub").mkdir(parents=True)
    (ws / "d/sub/f").write_text("x")
    (ws / "f").write_text("x")
    with pytest.raises(InvalidArgumentError, match="recursive"):
        client.delete_file("d")
    assert client.delete_file("f") == "file"
    assert client.delete_file("d", recursive=True) == "directory"
    assert list(ws.iterdir()) == []
    with pytest.raises(NotFoundError):
        client.delete_file("f")
    with pytest.raises(InvalidArgumentError):
        client.delete_file("/workspace", recursive=True)
    assert "itself" in guest_refuses(client, "file.delete", {"path": "/workspace"})


def test_list(client: GuestClient, ws: Path) -> None:
    (ws / "d").mkdir()
    (ws / "d/f.txt").write_text("hello")
    (ws / "link").symlink_to("d/f.txt")
    top = client.list_files()
    assert [(e.path, e.artifact_type) for e in top.entries] == [
        ("/workspace/d", "directory"),
        ("/workspace/link", "symlink"),
    ]
    assert top.entries[1].link_target == "d/f.txt" and not top.truncated
    deep = client.list_files("/workspace", recursive=True)
    assert [e.path for e in deep.entries] == [
        "/workspace/d",
        "/workspace/d/f.txt",
        "/workspace/link",
    ]
    assert deep.entries[1].size_bytes == 5
    single = client.list_files("d/f.txt")
    assert [(e.path, e.artifact_type) for e in single.entries] == [("/workspace/d/f.txt", "file")]


def test_list_is_bounded(client: GuestClient, ws: Path) -> None:
    for i in range(pf.MAX_LIST_ENTRIES + 5):
        (ws / f"f{i:05}").touch()
    listing = client.list_files()
    assert listing.truncated and len(listing.entries) == pf.MAX_LIST_ENTRIES


# --- archives ----------------------------------------------------------------------------------


def build_tree(top: Path) -> None:
    (top / "src/pkg").mkdir(parents=True)
    (top / "src/pkg/mod.py").write_text("print('hi')\n")
    (top / "run.sh").write_text("#!/bin/sh\necho run\n")
    (top / "run.sh").chmod(0o755)
    (top / "private").write_bytes(os.urandom(300_000))
    (top / "private").chmod(0o600)
    (top / "src").chmod(0o750)
    (top / "empty-dir").mkdir()
    (top / "src/link").symlink_to("pkg/mod.py")


def relative_snapshot(top: Path) -> dict[str, tuple[str, int, str]]:
    return {str(Path(k).relative_to(top)): v for k, v in snapshot(top).items()}


def test_tar_round_trip_keeps_content_modes_and_links(client: GuestClient, ws: Path) -> None:
    build_tree(ws / "project")
    chunks: list[bytes] = []
    created = client.create_tar("project", chunks.append)
    assert created.artifact_type == "directory" and created.entry_count == 7
    assert created.bytes_written == sum(map(len, chunks))
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        assert "src/pkg/mod.py" in tar.getnames() and tar.getmember("src/link").issym()
    extracted = client.extract_tar(iter(chunks), dest="copy/of/project")
    assert extracted.entry_count == 7
    assert extracted.bytes_written == 300_000 + len("print('hi')\n#!/bin/sh\necho run\n")
    assert relative_snapshot(ws / "copy/of/project") == relative_snapshot(ws / "project")
    assert not [p for p in ws.iterdir() if p.name.startswith(".pyro")]  # staging is gone
    single: list[bytes] = []
    assert client.create_tar("project/run.sh", single.append).artifact_type == "file"
    with tarfile.open(fileobj=io.BytesIO(b"".join(single))) as tar:
        assert tar.getnames() == ["run.sh"] and tar.getmember("run.sh").mode == 0o755


def test_extract_gzip_over_existing_content(client: GuestClient, ws: Path, box: Sandbox) -> None:
    (ws / "d").mkdir()
    (ws / "d/old.txt").write_text("old")
    (ws / "d/keep.txt").write_text("kept")
    os.link(box.outside / "secret", ws / "d/hard")
    archive = make_tar(
        [(member("d/old.txt"), b"new"), (member("d/hard"), b"replaced"), (member("e/f"), b"f")],
        gz=True,
    )
    assert client.extract_tar(io.BytesIO(archive)).entry_count == 3
    assert (ws / "d/old.txt").read_text() == "new" and (ws / "d/keep.txt").read_text() == "kept"
    assert (ws / "d/hard").read_text() == "replaced" and (ws / "e/f").read_text() == "f"
    assert (box.outside / "secret").read_text() == "top secret\n"


def chr_device() -> Any:
    info = member("dev/null-copy", tarfile.CHRTYPE)
    info.devmajor, info.devminor = 1, 3
    return info


GOOD = (member("good.txt"), b"good")
BAD_ARCHIVES = {
    "absolute name": [GOOD, (member("/etc/evil"), b"x")],
    "dot-dot name": [GOOD, (member("a/../../evil"), b"x")],
    "absolute symlink": [GOOD, (member("l", tarfile.SYMTYPE, "/etc/passwd"), None)],
    "symlink climbing out": [GOOD, (member("a/l", tarfile.SYMTYPE, "../../x"), None)],
    "symlink chain out": [
        (member("sub", tarfile.DIRTYPE, mode=0o755), None),
        (member("sub/loop", tarfile.SYMTYPE, "."), None),
        (member("l", tarfile.SYMTYPE, "sub/loop/../.."), None),
    ],
    "hard link out": [GOOD, (member("h", tarfile.LNKTYPE, "../outside/secret"), None)],
    "hard link absolute": [GOOD, (member("h", tarfile.LNKTYPE, "/etc/passwd"), None)],
    "hard link to a non-member": [GOOD, (member("h", tarfile.LNKTYPE, "elsewhere.txt"), None)],
    "device node": [GOOD, (chr_device(), None)],
    "fifo": [GOOD, (member("fifo", tarfile.FIFOTYPE), None)],
    "member under a symlink member": [
        (member("l", tarfile.SYMTYPE, "d"), None),
        (member("l/f", tarfile.REGTYPE), b"x"),
    ],
    "duplicate file": [GOOD, GOOD],
    # Bad only because of what the workspace already holds:
    "through a symlink already there": [GOOD, (member("dirlink/f"), b"x")],
    "over an existing directory": [GOOD, (member("existing-dir"), b"x")],
}
BAD_HERE_ONLY = {"through a symlink already there", "over an existing directory"}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_bad_archives_are_refused_before_anything_is_written(
    client: GuestClient, box: Sandbox, ws: Path, case: str
) -> None:
    (ws / "existing-dir").mkdir()
    (ws / "dirlink").symlink_to(box.outside)
    before = snapshot(box.ws, box.outside)
    archive = make_tar(BAD_ARCHIVES[case])
    with pytest.raises(InvalidArgumentError, match=r"archive|symlink|hard link|member"):
        client.extract_tar(archive)
    if case not in BAD_HERE_ONLY:
        with pytest.raises(InvalidArgumentError):
            client.extract_tar(archive, dest="sub/dir")
    assert snapshot(box.ws, box.outside) == before


@pytest.mark.parametrize("data", [b"", b"not a tar at all" * 100, b"\x1f\x8bbroken gzip"])
def test_input_that_is_not_a_tar_is_refused(client: GuestClient, ws: Path, data: bytes) -> None:
    with pytest.raises(InvalidArgumentError, match="not a valid tar"):
        client.extract_tar(data)
    assert list(ws.iterdir()) == []


def test_links_inside_the_destination_are_accepted(client: GuestClient, ws: Path) -> None:
    archive = make_tar(
        [
            (member("bin", tarfile.DIRTYPE, mode=0o755), None),
            (member("pkg/tool.js"), b"tool"),
            (member("bin/tool", tarfile.SYMTYPE, "../pkg/tool.js"), None),
            (member("bin/tool2", tarfile.LNKTYPE, "pkg/tool.js"), None),
            (member("./", tarfile.DIRTYPE, mode=0o755), None),
        ]
    )
    assert client.extract_tar(archive, dest="node_modules").entry_count == 4
    assert (ws / "node_modules/bin/tool").read_text() == "tool"
    tool, hard = ws / "node_modules/pkg/tool.js", ws / "node_modules/bin/tool2"
    assert tool.stat().st_ino == hard.stat().st_ino


# --- manifest ----------------------------------------------------------------------------------


def test_manifest_since_hashes_only_what_changed(client: GuestClient, ws: Path) -> None:
    (ws / "a").mkdir()
    (ws / "a/same.txt").write_text("same")
    (ws / "a/grow.txt").write_text("grow")
    (ws / "touch.txt").write_text("touch")
    (ws / "gone.txt").write_text("gone")
    (ws / "link").symlink_to("a/same.txt")
    first = client.manifest()
    files = {e.path: e for e in first.entries}
    assert first.hashed == 4 and not first.truncated
    assert files["a/same.txt"].sha256 == hashlib.sha256(b"same").hexdigest()
    assert files["a"].type == "directory" and files["a"].sha256 is None
    assert files["link"].type == "symlink" and files["link"].link_target == "a/same.txt"
    since = {e.path: (e.size, e.mtime_ns) for e in first.entries}

    unchanged = client.manifest(since=since)
    assert unchanged.hashed == 0 and all(e.sha256 is None for e in unchanged.entries)

    (ws / "a/grow.txt").write_text("grown")
    stamp = (ws / "touch.txt").stat().st_mtime_ns + 1_000_000_000
    os.utime(ws / "touch.txt", ns=(stamp, stamp))
    (ws / "gone.txt").unlink()
    (ws / "new.txt").write_text("new")
    second = {e.path: e for e in client.manifest(since=since).entries}
    hashed = sorted(path for path, e in second.items() if e.sha256 is not None)
    assert hashed == ["a/grow.txt", "new.txt", "touch.txt"]
    assert "gone.txt" not in second and second["a/same.txt"].sha256 is None
    assert client.manifest("a").entries[0].path == "grow.txt"  # relative to the directory


def test_manifest_refuses_a_bad_since_document(client: GuestClient) -> None:
    for document in (b"[1, 2]", b"{not json", b'{"a": [1]}', b'{"a": [true, 2]}'):
        params = {"path": "/workspace", "since": True}
        message = guest_refuses(client, "tree.manifest", params, document)
        assert "since" in message
        with pytest.raises(InvalidArgumentError):
            client._call(
                "tree.manifest",
                params,
                WAIT,
                lambda w, r: r,
                source=[document],
                streams=(frames.DATA,),
                max_output=1 << 20,
            )


# --- patches -----------------------------------------------------------------------------------


def patch_tree(ws: Path) -> None:
    (ws / "keep.txt").write_text("one\ntwo\nthree\n")
    (ws / "old.txt").write_text("old\n")
    (ws / "dir").mkdir()
    (ws / "dir/before.txt").write_text("a\nb\nc\nd\ne\nf\ng\nh\n")


def git_patch(workdir: Path) -> str:
    """The patch as git writes it: a modification, a new file, a deletion, a renamed file."""
    repo = workdir / "repo"
    repo.mkdir()
    patch_tree(repo)

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True)
        return done.stdout.decode()

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    (repo / "keep.txt").write_text("one\nTWO\nthree\n")
    (repo / "added.txt").write_text("-- a line that looks like a header\nnew\n")
    (repo / "old.txt").unlink()
    (repo / "dir/before.txt").rename(repo / "dir/after.txt")
    (repo / "dir/after.txt").write_text("a\nb\nc\nd\ne\nf\ng\nH\n")
    git("add", "-A")
    patch = git("diff", "--cached", "-M")
    assert "rename from dir/before.txt" in patch and "new file mode" in patch
    return patch


@needs_git
def test_patch_with_new_deleted_and_renamed_files(
    client: GuestClient, ws: Path, workdir: Path
) -> None:
    patch_tree(ws)
    changes = client.apply_patch(git_patch(workdir))
    assert sorted((c.path, c.status, c.source) for c in changes) == [
        ("/workspace/added.txt", "added", None),
        ("/workspace/dir/after.txt", "renamed", "/workspace/dir/before.txt"),
        ("/workspace/keep.txt", "modified", None),
        ("/workspace/old.txt", "deleted", None),
    ]
    assert (ws / "keep.txt").read_text() == "one\nTWO\nthree\n"
    assert (ws / "added.txt").read_text() == "-- a line that looks like a header\nnew\n"
    assert not (ws / "old.txt").exists() and not (ws / "dir/before.txt").exists()
    assert (ws / "dir/after.txt").read_text() == "a\nb\nc\nd\ne\nf\ng\nH\n"


@needs_git
def test_a_failing_hunk_changes_nothing(
    client: GuestClient, ws: Path, box: Sandbox, workdir: Path
) -> None:
    patch_tree(ws)
    # Only the rename's hunk fails; the other files' hunks would apply.
    (ws / "dir/before.txt").write_text("a\nb\nc\nd\ne\nf\ng\nsomething else\n")
    before = snapshot(box.ws)
    with pytest.raises(InvalidArgumentError, match="does not apply, so nothing was changed"):
        client.apply_patch(git_patch(workdir))
    assert snapshot(box.ws) == before


@pytest.mark.parametrize(
    "patch",
    [
        "--- a/../outside/secret\n+++ b/../outside/secret\n@@ -1 +1 @@\n-top secret\n+pwned\n",
        "--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-x\n+y\n",
        "diff --git a/x b/x\nrename from x\nrename to ../escape\n",
        "not a patch at all\n",
    ],
)
def test_patches_leaving_the_workspace_are_refused(
    client: GuestClient, box: Sandbox, patch: str
) -> None:
    before = snapshot(box.ws, box.outside)
    with pytest.raises(InvalidArgumentError):
        client.apply_patch(patch)
    guest_refuses(client, "patch.apply", {}, patch.encode())
    assert snapshot(box.ws, box.outside) == before


def test_patch_without_git_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process agent with a PATH that has no git, as in an environment without it."""
    monkeypatch.setitem(ops.DEFAULT_EXEC_ENV, "PATH", str(tmp_path / "empty"))
    agent = agent_module.Agent(agent_module.AgentConfig.sandboxed(str(tmp_path)))
    host, guest = socket.socketpair()
    thread = threading.Thread(target=agent.serve_connection, args=(guest,))
    thread.start()
    with GuestClient(host) as client:
        client.hello()
        with pytest.raises(GuestError, match="needs git, and this environment has none"):
            client.apply_patch("--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n")
    thread.join(WAIT)
    guest.close()


# --- the guest's interpreter ---------------------------------------------------------------------


@needs_git
@pytest.mark.skipif(not os.path.exists(PY311), reason=f"{PY311} is not installed")
def test_file_ops_under_python_3_11_as_shipped(workdir: Path) -> None:
    box = Sandbox(workdir, PY311)
    try:
        with GuestClient.connect_unix(box.socket_path, timeout=WAIT) as client:
            build_tree(box.ws / "p")
            chunks: list[bytes] = []
            client.create_tar("p", chunks.append)
            assert client.extract_tar(chunks, dest="q").entry_count == 7
            assert relative_snapshot(box.ws / "q") == relative_snapshot(box.ws / "p")
            client.write_file("q/run.sh", b"changed\n")
            assert client.read_file("q/run.sh", max_bytes=3).content == b"cha"
            assert {e.path for e in client.list_files("q").entries} >= {"/workspace/q/src"}
            assert client.manifest("q").hashed == 3
            patch = "--- a/q/run.sh\n+++ b/q/run.sh\n@@ -1 +1 @@\n-changed\n+patched\n"
            assert client.apply_patch(patch)[0].status == "modified"
            assert client.delete_file("q", recursive=True) == "directory"
            with pytest.raises(InvalidArgumentError):
                client.extract_tar(make_tar(BAD_ARCHIVES["symlink chain out"]))
    finally:
        box.stop()
