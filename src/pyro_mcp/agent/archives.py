"""pyro guest agent, archives: tar.create streams a tar of a workspace path, tar.extract
unpacks one into the workspace.

Extraction never writes to its destination before the whole archive is checked: the input is
spooled to a staging directory inside the root (the same file system, so the final moves are
renames), every member is validated, the archive is unpacked into the staging directory, and
only then moved into place. Members are unpacked by hand with descriptor-relative calls rather
than tarfile's extract(), so the rules do not depend on the guest Python's tarfile filters.
stdlib-only and Python 3.11 compatible (see server.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from pyro_mcp.agent import files as af
from pyro_mcp.protocol import file_ops as pf
from pyro_mcp.protocol import frames

if TYPE_CHECKING:  # only for annotations: server.py imports this module
    from pyro_mcp.agent.server import Call

Params = dict[str, Any]
Parts = tuple[str, ...]
invalid = af.invalid

_MAX_LINK_HOPS = 40  # the kernel's own limit on symbolic links in one lookup
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def operations(tree: af.Tree) -> dict[str, Callable[[Call, Params], Params]]:
    return {
        "tar.create": lambda call, params: create(tree, call, params),
        "tar.extract": lambda call, params: extract(tree, call, params),
    }


# --- tar.create ------------------------------------------------------------------------------


class _Exact:
    """Exactly `size` bytes of a file that may change while it is archived: a shrunk file is
    padded with zeros, a grown one cut, so the tar stream stays well-formed."""

    def __init__(self, handle: IO[bytes], size: int) -> None:
        self.handle, self.left = handle, size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.handle.read(size) if size else b""
        self.left -= size
        return data + bytes(size - len(data))


def _add(tar: tarfile.TarFile, dir_fd: int, name: str, arcname: str, st: os.stat_result) -> bool:
    """Archive one entry; False when it is skipped (a socket, device or FIFO, or gone)."""
    kind = af.artifact_type(st.st_mode)
    info = tarfile.TarInfo(arcname)
    # Whole seconds: a fractional mtime costs tarfile an extra PAX header per member.
    info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    if kind == "directory":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif kind == "symlink":
        info.type = tarfile.SYMTYPE
        try:
            info.linkname = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            return False
        tar.addfile(info)
    elif kind == "file":
        try:
            fd, opened = af.open_regular(dir_fd, name, (arcname,))
        except (frames.OpError, OSError):
            return False
        with os.fdopen(fd, "rb") as handle:
            info.size = opened.st_size
            tar.addfile(info, _Exact(handle, opened.st_size))
    else:
        return False
    return True


def _tar_writer(sink: af.DataSink) -> tarfile.TarFile:
    return tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload, no-any-return]


def _archive_directory(dir_fd: int, sink: af.DataSink, call: Call) -> tuple[int, int]:
    """A tar of everything below dir_fd as (entries, skipped): GNU tar where the system has
    it (under a software CPU it is ~15 times faster than tarfile), tarfile otherwise."""
    if _GNU_TAR and shutil.which("tar") and shutil.which("find"):
        return _gnu_tar(dir_fd, sink, call)
    entries = skipped = 0
    with _tar_writer(sink) as tar:
        for rel, child, holder in af.walk(dir_fd):
            added = _add(tar, holder, rel[-1], "/".join(rel), child)
            entries, skipped = entries + added, skipped + (not added)
    return entries, skipped


def _gnu_tar(dir_fd: int, sink: af.DataSink, call: Call) -> tuple[int, int]:
    # The directory is named through the agent's own descriptor, so nothing renamed or
    # swapped for a link since it was resolved can redirect the archive. GNU format: long
    # names still fit, and no PAX header per member for its sub-second mtime (half the bytes).
    top = f"/proc/{os.getpid()}/fd/{dir_fd}"
    listed = subprocess.run(
        ["find", ".", "-mindepth", "1", "-printf", "%y%P\\0"],
        cwd=top, capture_output=True, check=False,
    )  # fmt: skip
    if listed.returncode != 0:
        raise invalid(f"cannot list the directory: {listed.stderr.decode(errors='replace')[-300:]}")
    found = [item for item in listed.stdout.split(b"\0") if item]  # b"<type letter><path>"
    # Files, directories and links only: sockets, devices and FIFOs are left out and counted.
    wanted = [item[1:] for item in found if item[:1] in (b"f", b"d", b"l")]
    proc = subprocess.Popen(
        ["tar", "--create", "--format=gnu", "--numeric-owner", "--no-recursion",
         "--ignore-failed-read", "--null", "--files-from=-", "--file=-"],
        cwd=top, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    feeder = threading.Thread(target=_feed, args=(proc.stdin, wanted), daemon=True)
    feeder.start()
    try:
        while chunk := proc.stdout.read(af.CHUNK):
            sink.write(chunk)
    finally:
        if proc.poll() is None and call.cancelled.is_set():
            proc.kill()
        errors = proc.stderr.read()[-300:]
        code = proc.wait()
        feeder.join()
    if code not in (0, 1):  # 1: a file changed while it was read, which a live tree may do
        raise invalid(f"tar failed ({code}): {errors.decode(errors='replace')}")
    return len(wanted), len(found) - len(wanted)


def _feed(pipe: IO[bytes], names: list[bytes]) -> None:
    with contextlib.suppress(BrokenPipeError), pipe:
        for name in names:
            pipe.write(name + b"\0")


# Tests set this to False to run the tarfile path on hosts that have GNU tar.
_GNU_TAR = True


def create(tree: af.Tree, call: Call, params: Params) -> Params:
    """A tar of a file, symbolic link or directory as data output. A directory's members are
    named relative to it; a single entry is named by its own name."""
    p = pf.parse_file_params("tar.create", params)
    real = tree.resolve(p.parts, follow_final=False)
    sink = af.DataSink(call)
    entries = skipped = 0
    with tree.open_dir(real[:-1]) as parent_fd:
        st = os.stat(".", dir_fd=parent_fd) if not real else af.lstat_at(parent_fd, real[-1])
        if st is None:
            raise af.not_found(p.parts)
        kind = af.artifact_type(st.st_mode)
        if kind == "other":
            raise invalid(f"{pf.logical(p.parts)} is neither a file, a directory nor a symlink")
        if kind != "directory":
            with _tar_writer(sink) as tar:
                entries += _add(tar, parent_fd, real[-1], real[-1], st)
    if kind == "directory":
        with tree.open_dir(real) as dir_fd:
            entries, skipped = _archive_directory(dir_fd, sink, call)
    sink.flush()
    return {
        "artifact_type": kind,
        "entry_count": entries,
        "bytes_written": sink.sent,
        "skipped": skipped,
    }


# --- tar.extract: checking ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    parts: Parts
    kind: str  # file, directory, symlink, hardlink
    link: str = ""  # a symlink's target, or a hard link's member path


def _member_parts(name: str) -> Parts:
    if name.startswith("/"):
        raise invalid(f"archive member {name!r:.200} has an absolute name")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise invalid(f"archive member {name!r:.200} climbs out with '..'")
    if "\0" in name or len(name.encode("utf-8", "surrogateescape")) > pf.MAX_PATH_BYTES:
        raise invalid(f"archive member {name!r:.200} has an unusable name")
    return parts


def _kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "directory"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr() or info.isblk():
        what = "device node"
    elif info.isfifo():
        what = "FIFO"
    else:
        what = f"member of tar type {info.type!r}"
    raise invalid(
        f"archive member {info.name!r:.200} is a {what}; only files, directories "
        "and links are accepted"
    )


class _Dest:
    """What already exists at the destination (which may not exist yet), by relative path."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self._kinds: dict[Parts, str | None] = {}

    def kind(self, parts: Parts) -> str | None:
        if self.fd is None:
            return None
        if parts not in self._kinds:
            try:
                st = af.lstat_at(self.fd, "/".join(parts))
            except OSError:  # a parent is a file: nothing can exist there
                st = None
            self._kinds[parts] = None if st is None else af.artifact_type(st.st_mode)
        return self._kinds[parts]

    def link(self, parts: Parts) -> str | None:
        if self.kind(parts) != "symlink" or self.fd is None:
            return None
        return os.readlink("/".join(parts), dir_fd=self.fd)


def _check_dest(dest: _Dest, parts: Parts, kind: str, shown: Parts) -> None:
    """A member may replace a file or link, never turn a directory into something else or go
    through a non-directory (a symbolic link in the destination could lead anywhere)."""
    existing = dest.kind(parts)
    if existing is None or (existing == "directory") == (kind == "directory"):
        return
    raise invalid(
        f"archive member {'/'.join(parts)} would replace {pf.logical(shown + parts)}, "
        f"which is a {existing}"
    )


class _Scan:
    """Every member checked against the rules, the archive's other members and the dest."""

    def __init__(self, dest: _Dest, shown: Parts) -> None:
        self.dest, self.shown = dest, shown
        self.members: list[_Member] = []
        self.kinds: dict[Parts, str] = {}
        self.implied: set[Parts] = set()  # parents of members, made as directories
        self.file_bytes = 0

    def add(self, info: tarfile.TarInfo) -> None:
        parts = _member_parts(info.name)
        if not parts:
            if info.isdir():
                return  # "." or "./": the destination itself
            raise invalid(f"archive member {info.name!r:.200} has no name")
        kind = _kind(info)
        if len(self.members) >= pf.MAX_ARCHIVE_ENTRIES:
            raise invalid(f"the archive has more than {pf.MAX_ARCHIVE_ENTRIES} members")
        for depth in range(1, len(parts)):
            parent = parts[:depth]
            if self.kinds.get(parent, "directory") != "directory":
                raise invalid(
                    f"archive member {'/'.join(parts)} lies under {'/'.join(parent)}, "
                    f"which the archive makes a {self.kinds[parent]}"
                )
            if parent not in self.implied:
                _check_dest(self.dest, parent, "directory", self.shown)
                self.implied.add(parent)
        if parts in self.kinds and not self.kinds[parts] == kind == "directory":
            raise invalid(f"the archive holds {'/'.join(parts)} twice")
        if kind != "directory" and parts in self.implied:
            raise invalid(f"archive member {'/'.join(parts)} is both a directory and a {kind}")
        _check_dest(self.dest, parts, kind, self.shown)
        link = ""
        if kind == "hardlink":
            try:
                target = _member_parts(info.linkname)
            except frames.OpError:
                target = ()  # an absolute or climbing target is never an earlier member
            if self.kinds.get(target) != "file":
                raise invalid(
                    f"hard link {'/'.join(parts)} -> {info.linkname!r:.200} must point "
                    "to a regular file earlier in the archive"
                )
            link = "/".join(target)
        elif kind == "symlink":
            link = info.linkname
            if not link or "\0" in link or link.startswith("/"):
                raise invalid(
                    f"symlink {'/'.join(parts)} -> {link!r:.200}: link targets must be relative"
                )
        elif kind == "file":
            self.file_bytes += info.size
            if self.file_bytes > pf.MAX_EXTRACT_BYTES:
                raise invalid(f"the archive unpacks to more than {pf.MAX_EXTRACT_BYTES} bytes")
        self.kinds[parts] = kind
        self.members.append(_Member(parts, kind, link))

    def check_links(self) -> None:
        links = {m.parts: m.link for m in self.members if m.kind == "symlink"}
        for parts, target in links.items():
            if self._escapes(parts, target, links):
                raise invalid(
                    f"symlink {'/'.join(parts)} -> {target!r:.200} leads out of the destination"
                )

    def _escapes(self, parts: Parts, target: str, links: dict[Parts, str]) -> bool:
        """Resolve the link as the kernel would, with the destination as the top: through the
        archive's own links first, then links already in the destination."""
        stack, pending, hops = list(parts[:-1]), target.split("/"), 0
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if not stack:
                    return True
                stack.pop()
                continue
            stack.append(name)
            here = tuple(stack)
            if here in self.kinds or here in self.implied:
                found = links.get(here)
            else:
                found = self.dest.link(here)
            if found is None:
                continue
            hops += 1
            if hops > _MAX_LINK_HOPS or found.startswith("/"):
                return True
            stack.pop()
            pending = found.split("/") + pending
        return False


def check_archive(members: Iterable[tarfile.TarInfo]) -> tuple[int, int]:
    """Check members against the extraction rules, with no destination (the host checks seeds
    and exports with it); returns (member count, regular-file bytes), raises OpError."""
    scan = _Scan(_Dest(None), ())
    for info in members:
        scan.add(info)
    scan.check_links()
    return len(scan.members), scan.file_bytes


# --- tar.extract: doing ------------------------------------------------------------------------


@contextlib.contextmanager
def _open_archive(stage_fd: int) -> Iterator[tarfile.TarFile]:
    """The spooled archive as a stream; gzip when its magic says so, plain tar otherwise."""
    fd = os.open("archive", os.O_RDONLY | os.O_CLOEXEC, dir_fd=stage_fd)
    with os.fdopen(fd, "rb") as handle:
        mode = "r|gz" if handle.read(2) == b"\x1f\x8b" else "r|"
        handle.seek(0)
        try:
            with tarfile.open(fileobj=handle, mode=mode) as tar:  # type: ignore[call-overload]
                yield tar
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise invalid(f"the input is not a valid tar archive: {exc}") from None


def _spool(call: Call, stage_fd: int) -> int:
    fd = os.open("archive", _NEW_FILE, 0o600, dir_fd=stage_fd)
    size = 0
    with os.fdopen(fd, "wb") as handle:
        while chunk := call.read_input():
            size += len(chunk)
            if size > pf.MAX_ARCHIVE_BYTES:
                raise invalid(f"tar.extract takes archives of at most {pf.MAX_ARCHIVE_BYTES} bytes")
            handle.write(chunk)
    return size


def _unpack(
    tar: tarfile.TarFile, out_fd: int, call: Call, check: Callable[[tarfile.TarInfo], None]
) -> int:
    """Unpack the archive below `out_fd`, each member passing `check` first; returns the file
    bytes written. One pass: under a software CPU, parsing the headers twice cost a third."""
    written, modes = 0, []
    cached: tuple[Parts, int] | None = None  # members come grouped by directory
    try:
        for info in tar:
            call.check_cancelled()
            check(info)
            parts = _member_parts(info.name)
            if not parts:
                continue
            if cached is None or cached[0] != parts[:-1]:
                if cached is not None:
                    os.close(cached[1])
                cached = None
                cached = (parts[:-1], af.descend(out_fd, parts[:-1], create=True))
            dir_fd, name, kind = cached[1], parts[-1], _kind(info)
            if kind == "directory":
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=dir_fd)
                modes.append((parts, info.mode & 0o777))
            elif kind == "symlink":
                os.symlink(info.linkname, name, dir_fd=dir_fd)
            elif kind == "hardlink":
                target = "/".join(_member_parts(info.linkname))
                os.link(
                    target,
                    "/".join(parts),
                    src_dir_fd=out_fd,
                    dst_dir_fd=out_fd,
                    follow_symlinks=False,
                )
            else:
                written += _unpack_file(tar, info, dir_fd, name, call)
    finally:
        if cached is not None:
            os.close(cached[1])
    for parts, mode in reversed(modes):  # deepest last-seen first; staging has no links
        os.chmod("/".join(parts), mode, dir_fd=out_fd)
    return written


def _unpack_file(
    tar: tarfile.TarFile, info: tarfile.TarInfo, dir_fd: int, name: str, call: Call
) -> int:
    source = tar.extractfile(info)
    if source is None:
        raise invalid(f"archive member {info.name!r:.200} has no data")
    fd = os.open(name, _NEW_FILE, 0o600, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as handle:
        shutil.copyfileobj(source, handle, af.CHUNK)
        call.check_cancelled()
        # Permission bits only: no setuid, setgid or sticky bits from an archive.
        os.fchmod(handle.fileno(), info.mode & 0o777)
        handle.flush()
        os.utime(handle.fileno(), (info.mtime, info.mtime))
    return info.size


def _merge(src_fd: int, dst_fd: int, shown: Parts) -> None:
    """Move everything below `src_fd` into `dst_fd`: renames, merging existing directories."""
    for name in sorted(os.listdir(src_fd)):
        src, dst = af.lstat_at(src_fd, name), af.lstat_at(dst_fd, name)
        assert src is not None
        if dst is not None and stat.S_ISDIR(src.st_mode) and stat.S_ISDIR(dst.st_mode):
            sub_src = os.open(name, af.DIR_FLAGS, dir_fd=src_fd)
            try:
                sub_dst = os.open(name, af.DIR_FLAGS, dir_fd=dst_fd)
                try:
                    _merge(sub_src, sub_dst, (*shown, name))
                finally:
                    os.close(sub_dst)
            finally:
                os.close(sub_src)
        elif dst is not None and (stat.S_ISDIR(src.st_mode) or stat.S_ISDIR(dst.st_mode)):
            raise invalid(f"{pf.logical((*shown, name))} changed type during the extraction")
        else:
            os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def _open_if_exists(tree: af.Tree, parts: Parts) -> int | None:
    """The destination's descriptor, None if it does not exist yet; refuses links on the way."""
    fd = tree.open_root()
    for depth, name in enumerate(parts):
        try:
            fd = af.step(fd, name, parts[: depth + 1], create=False)
        except frames.OpError as exc:
            if exc.code == frames.ERR_NOT_FOUND:
                return None
            raise
    return fd


def extract(tree: af.Tree, call: Call, params: Params) -> Params:
    """Unpack the input (a plain or gzip tar) into dest; nothing is written there unless
    every member passes (see _Scan)."""
    p = pf.parse_file_params("tar.extract", params)
    root_fd = tree.open_root()
    staging = f".pyro-extract-{secrets.token_hex(8)}"
    try:
        os.mkdir(staging, 0o700, dir_fd=root_fd)
        stage_fd = os.open(staging, af.DIR_FLAGS, dir_fd=root_fd)
        try:
            return _extract(tree, call, p.parts, stage_fd)
        finally:
            os.close(stage_fd)
            with contextlib.suppress(OSError):
                shutil.rmtree(staging, dir_fd=root_fd)
    finally:
        os.close(root_fd)


def _extract(tree: af.Tree, call: Call, dest: Parts, stage_fd: int) -> Params:
    """Unpack into staging, checking each member as it comes and the links once all are in;
    only a wholly accepted archive is moved into dest."""
    _spool(call, stage_fd)
    os.mkdir("tree", 0o700, dir_fd=stage_fd)
    out_fd = os.open("tree", af.DIR_FLAGS, dir_fd=stage_fd)
    try:
        dest_fd = _open_if_exists(tree, dest)
        try:
            scan = _Scan(_Dest(dest_fd), dest)
            with _open_archive(stage_fd) as tar:
                written = _unpack(tar, out_fd, call, scan.add)
            scan.check_links()
        finally:
            if dest_fd is not None:
                os.close(dest_fd)
        with tree.open_dir(dest, create=True) as dest_fd:
            _merge(out_fd, dest_fd, dest)
    finally:
        os.close(out_fd)
    return {"entry_count": len(scan.members), "bytes_written": written}
