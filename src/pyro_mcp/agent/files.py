"""pyro guest agent, files: file.list/read/write/delete and tree.manifest, confined to a root.

The root is /workspace (``<sandbox>/workspace`` in tests). Every path is reached by walking
directory file descriptors with O_NOFOLLOW, so a symbolic link swapped in mid-request cannot
lead an operation out of the root. Reads may pass through symbolic links that stay inside the
root (checked with realpath first, then walked without following anything); writes refuse any
symbolic link on the way. stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pyro_mcp.protocol import file_ops as pf
from pyro_mcp.protocol import frames

if TYPE_CHECKING:  # only for annotations: server.py imports this module
    from pyro_mcp.agent.server import Call

Params = dict[str, Any]
Parts = tuple[str, ...]
OpError = frames.OpError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO that slipped past the type check must not hang the request.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 256 * 1024
_HASH_CHUNK = 1024 * 1024


def invalid(message: str) -> OpError:
    return OpError(frames.ERR_INVALID_ARGUMENT, message)


def not_found(parts: Parts) -> OpError:
    return OpError(frames.ERR_NOT_FOUND, f"{pf.logical(parts)} does not exist")


def artifact_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class Tree:
    """The confined root and the ways to reach something inside it."""

    def __init__(self, root: str) -> None:
        self.root = root

    def open_root(self) -> int:
        os.makedirs(self.root, exist_ok=True)
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def resolve(self, parts: Parts, *, follow_final: bool) -> Parts:
        """`parts` with the symbolic links inside the root expanded (the last one only if
        follow_final); refuses links that lead out. The result is then walked with O_NOFOLLOW,
        so a link swapped in after this check makes the walk fail rather than escape."""
        real_root = os.path.realpath(self.root)
        head, last = (parts, ()) if follow_final or not parts else (parts[:-1], parts[-1:])
        real = os.path.realpath(os.path.join(real_root, *head))
        if real != real_root and not real.startswith(real_root + os.sep):
            raise invalid(f"{pf.logical(parts)} leads outside {pf.WORKSPACE} through a symlink")
        inner = os.path.relpath(real, real_root)
        return (() if inner == "." else tuple(inner.split(os.sep))) + tuple(last)

    @contextlib.contextmanager
    def open_dir(self, parts: Parts, *, create: bool = False) -> Iterator[int]:
        """A descriptor of directory `parts`, reached without following any symbolic link;
        with create, missing directories are made on the way."""
        fd = self.open_root()
        for depth, name in enumerate(parts):
            fd = step(fd, name, parts[: depth + 1], create)  # closes the old fd, even failing
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def open_parent(self, parts: Parts, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """The directory holding `parts` (which must not be the root) and the final name."""
        with self.open_dir(parts[:-1], create=create) as fd:
            yield fd, parts[-1]


def descend(fd: int, parts: Parts, *, create: bool = False, shown: Parts = ()) -> int:
    """A new descriptor of directory `parts` below directory `fd` (which stays open), reached
    like Tree.open_dir; `shown` prefixes the parts in messages."""
    current = os.dup(fd)
    for depth, name in enumerate(parts):
        current = step(current, name, shown + parts[: depth + 1], create)
    return current


def step(fd: int, name: str, parts: Parts, create: bool) -> int:
    """Descend from `fd` into `name` (closing `fd`), refusing anything but a real directory."""
    try:
        try:
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise not_found(parts) from None
            with contextlib.suppress(FileExistsError):  # a concurrent mkdir is fine
                os.mkdir(name, 0o755, dir_fd=fd)
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = lstat_at(fd, name)
            kind = "a symbolic link" if st and stat.S_ISLNK(st.st_mode) else "not a directory"
            raise invalid(f"{pf.logical(parts)} is {kind}") from None
    finally:
        os.close(fd)
    return child


def walk(
    fd: int, prefix: Parts = (), depth: int = 0, *, recursive: bool = True
) -> Iterator[tuple[Parts, os.stat_result, int]]:
    """Everything below directory `fd` (its children only, unless recursive), depth first in
    name order, never following a link.

    Yields (parts relative to `fd`, lstat, descriptor of the directory holding it); that
    descriptor is valid until the consumer asks for the next item.
    """
    if depth >= pf.MAX_TREE_DEPTH:
        raise invalid(f"the tree is deeper than {pf.MAX_TREE_DEPTH} levels")
    entries = []
    with os.scandir(fd) as listing:
        for entry in listing:
            with contextlib.suppress(FileNotFoundError):  # removed while we list
                entries.append((entry.name, entry.stat(follow_symlinks=False)))
    entries.sort(key=lambda item: item[0])
    for name, st in entries:
        parts = (*prefix, name)
        yield parts, st, fd
        if recursive and stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # replaced by something else since we listed it
            try:
                yield from walk(sub, parts, depth + 1)
            finally:
                os.close(sub)


def open_regular(dir_fd: int, name: str, parts: Parts) -> tuple[int, os.stat_result]:
    """Open a regular file for reading, refusing directories, links, devices and FIFOs."""
    st = lstat_at(dir_fd, name)
    if st is None:
        raise not_found(parts)
    if not stat.S_ISREG(st.st_mode):
        raise invalid(f"{pf.logical(parts)} is a {artifact_type(st.st_mode)}, not a file")
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode):  # replaced between the lstat and the open
        os.close(fd)
        raise invalid(f"{pf.logical(parts)} is not a regular file")
    return fd, opened


class DataSink:
    """Buffers a request's ``data`` output into frames; counts what it sent."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.buffer = bytearray()
        self.sent = 0

    def write(self, data: bytes) -> int:
        self.call.check_cancelled()
        self.buffer += data
        if len(self.buffer) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        while self.buffer:
            chunk = bytes(self.buffer[:CHUNK])
            del self.buffer[:CHUNK]
            self.call.send_output(frames.DATA, chunk)
            self.sent += len(chunk)

    def line(self, item: Params) -> None:
        """One JSON object per line; names that are not UTF-8 travel as \\u escapes."""
        try:
            text = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:
            text = json.dumps(item, separators=(",", ":")).encode()
        self.write(text + b"\n")


# --- operations ------------------------------------------------------------------------------


def operations(tree: Tree) -> dict[str, Callable[[Call, Params], Params]]:
    """The file operations on `tree`, by op name."""
    return {
        "file.list": lambda call, params: list_files(tree, call, params),
        "file.read": lambda call, params: read_file(tree, call, params),
        "file.write": lambda call, params: write_file(tree, call, params),
        "file.delete": lambda call, params: delete_file(tree, call, params),
        "tree.manifest": lambda call, params: manifest(tree, call, params),
    }


def _list_entry(parts: Parts, st: os.stat_result, dir_fd: int, name: str) -> Params:
    kind = artifact_type(st.st_mode)
    target = None
    if kind == "symlink":
        with contextlib.suppress(OSError):
            target = os.readlink(name, dir_fd=dir_fd)
    size = st.st_size if kind in ("file", "symlink") else 0
    return {
        "path": pf.logical(parts),
        "artifact_type": kind,
        "size_bytes": size,
        "link_target": target,
    }


def list_files(tree: Tree, call: Call, params: Params) -> Params:
    """A directory's children (or all its descendants), or the one entry a file path names."""
    p = pf.parse_file_params("file.list", params)
    real = tree.resolve(p.parts, follow_final=True)
    sink, count, truncated = DataSink(call), 0, False
    with tree.open_dir(real[:-1]) as parent_fd:
        st = os.stat(".", dir_fd=parent_fd) if not real else lstat_at(parent_fd, real[-1])
        if st is None:
            raise not_found(p.parts)
        if not stat.S_ISDIR(st.st_mode):
            sink.line(_list_entry(p.parts, st, parent_fd, real[-1]))
            count = 1
        else:
            with tree.open_dir(real) as dir_fd:
                for rel, child, holder in walk(dir_fd, recursive=p.recursive):
                    if count >= pf.MAX_LIST_ENTRIES:
                        truncated = True
                        break
                    sink.line(_list_entry(p.parts + rel, child, holder, rel[-1]))
                    count += 1
                    call.check_cancelled()
    sink.flush()
    return {"entry_count": count, "truncated": truncated, "data_bytes": sink.sent}


def read_file(tree: Tree, call: Call, params: Params) -> Params:
    """The first max_bytes of a regular file as data output; more is truncation, not error."""
    p = pf.parse_file_params("file.read", params)
    real = tree.resolve(p.parts, follow_final=True)
    if not real:
        raise invalid(f"{pf.logical(p.parts)} is a directory, not a file")
    with tree.open_parent(real) as (dir_fd, name):
        fd, st = open_regular(dir_fd, name, p.parts)
    sink, left = DataSink(call), p.max_bytes
    try:
        while left > 0:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:
                break
            sink.write(chunk)
            left -= len(chunk)
        # The file may change under us: truncation means more bytes exist, not a stat size.
        truncated = bool(os.read(fd, 1)) if left == 0 else False
    finally:
        os.close(fd)
    sink.flush()
    return {
        "path": pf.logical(p.parts),
        "size_bytes": st.st_size,
        "bytes_read": sink.sent,
        "truncated": truncated,
    }


def write_file(tree: Tree, call: Call, params: Params) -> Params:
    """Replace (or create) a file with the request's input, atomically: a temporary file in
    the same directory, renamed over the target once complete and synced."""
    p = pf.parse_file_params("file.write", params)
    with tree.open_parent(p.parts, create=p.create_parents) as (dir_fd, name):
        old = lstat_at(dir_fd, name)
        if old is not None and not stat.S_ISREG(old.st_mode):
            kind = artifact_type(old.st_mode)
            raise invalid(f"{pf.logical(p.parts)} is a {kind}; file.write replaces only files")
        mode = stat.S_IMODE(old.st_mode) if old is not None else 0o644
        temp = f".pyro-write-{secrets.token_hex(8)}"
        fd = os.open(
            temp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        try:
            written = 0
            while chunk := call.read_input():
                written += len(chunk)
                if written > pf.MAX_WRITE_BYTES:
                    raise invalid(f"file.write takes at most {pf.MAX_WRITE_BYTES} bytes")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
    return {"path": pf.logical(p.parts), "size_bytes": written, "bytes_written": written}


def delete_file(tree: Tree, call: Call, params: Params) -> Params:
    """Remove a file or symbolic link (never what it points to); a directory needs recursive."""
    p = pf.parse_file_params("file.delete", params)
    real = tree.resolve(p.parts, follow_final=False)
    if not real:
        raise invalid(f"refusing to delete {pf.WORKSPACE} itself")
    with tree.open_parent(real) as (dir_fd, name):
        st = lstat_at(dir_fd, name)
        if st is None:
            raise not_found(p.parts)
        kind = artifact_type(st.st_mode)
        if kind == "directory":
            if not p.recursive:
                raise invalid(f"{pf.logical(p.parts)} is a directory; pass recursive to delete it")
            shutil.rmtree(name, dir_fd=dir_fd)  # fd-based: never follows links inside
        else:
            os.unlink(name, dir_fd=dir_fd)
    return {"path": pf.logical(p.parts), "artifact_type": kind}


def _sha256(dir_fd: int, name: str, parts: Parts, call: Call) -> str | None:
    try:
        fd, _ = open_regular(dir_fd, name, parts)
    except (OpError, OSError):
        return None  # gone or replaced since the walk saw it
    digest = hashlib.sha256()
    try:
        while chunk := os.read(fd, _HASH_CHUNK):
            digest.update(chunk)
            call.check_cancelled()
    finally:
        os.close(fd)
    return digest.hexdigest()


def manifest(tree: Tree, call: Call, params: Params) -> Params:
    """Every entry below a directory with size and mtime; sha256 for regular files, but only
    for those whose [size, mtime_ns] differ from the since document (null means unchanged).

    started_ns is the guest clock when the walk began: a host keeping this manifest as the next
    since must drop entries whose mtime_ns is not older than it, because a file rewritten within
    one timestamp tick keeps its size and mtime (git's "racy" entries).
    """
    p = pf.parse_file_params("tree.manifest", params)
    since: dict[str, tuple[int, int]] = {}
    if p.since:
        data = bytearray()
        while chunk := call.read_input():
            data += chunk
            if len(data) > pf.MAX_SINCE_BYTES:
                raise invalid(f"the since document is larger than {pf.MAX_SINCE_BYTES} bytes")
        since = pf.parse_since(bytes(data))
    real = tree.resolve(p.parts, follow_final=True)
    started = time.time_ns()
    sink, count, hashed, truncated = DataSink(call), 0, 0, False
    with tree.open_dir(real) as dir_fd:
        for rel, st, holder in walk(dir_fd):
            if count >= pf.MAX_MANIFEST_ENTRIES:
                truncated = True
                break
            kind, key = artifact_type(st.st_mode), "/".join(rel)
            item: Params = {
                "path": key,
                "type": kind,
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": None,
            }
            if kind == "file" and since.get(key) != (st.st_size, st.st_mtime_ns):
                item["sha256"] = _sha256(holder, rel[-1], p.parts + rel, call)
                if item["sha256"] is None:
                    continue  # gone or replaced mid-walk: the next manifest sees what is there
                hashed += 1
            elif kind == "symlink":
                with contextlib.suppress(OSError):
                    item["link_target"] = os.readlink(rel[-1], dir_fd=holder)
            sink.line(item)
            count += 1
            call.check_cancelled()
    sink.flush()
    return {
        "entry_count": count,
        "truncated": truncated,
        "hashed": hashed,
        "started_ns": started,
        "data_bytes": sink.sent,
    }
