"""Host side of workspace archives: seeds (a directory or tar file made into one checked, plain
tar for the guest) and exports (a tar from the guest placed at a host path).

A member must pass the guest's own extraction rules (archives.check_archive): a seed the
guest would refuse is refused before any VM is involved, and an export is trusted no more than
the guest trusts a seed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pyro_mcp import paths
from pyro_mcp.agent import archives
from pyro_mcp.errors import (
    ConflictError,
    GuestError,
    InvalidArgumentError,
    NotFoundError,
    PyroError,
)
from pyro_mcp.protocol import frames
from pyro_mcp.protocol.redaction import Redactor

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
ARTIFACT_TYPES = ("file", "directory", "symlink")
# What a broken or truncated source archive raises while it is read.
_READ_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error, lzma.LZMAError)
_SEED_HINT = "a seed may only hold files, directories and links that stay inside it"
_EXPORT_HINT = "an export may only hold files, directories and links that stay inside it"
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


@dataclass(frozen=True)
class SeedArchive:
    """A seed written by prepare_archive, with where it came from and what it holds."""

    mode: str  # "directory" | "tar_archive" | "empty"
    source_path: str | None  # resolved absolute host path, None for empty
    entry_count: int
    bytes: int  # total regular-file bytes


@dataclass(frozen=True)
class Exported:
    """What extract_export placed on the host."""

    artifact_type: str  # file | directory | symlink
    entry_count: int
    bytes_written: int  # regular-file bytes written on the host


def _checked(members: Iterable[tarfile.TarInfo], hint: str) -> tuple[int, int]:
    try:
        return archives.check_archive(members)
    except frames.OpError as exc:
        raise InvalidArgumentError(str(exc), hint=hint) from None


class _Reader:
    """Exactly `size` bytes of a member's source for tarfile.addfile. A failed or short read
    raises fail(reason), so a broken source is never mistaken for a failure to write."""

    def __init__(self, handle: IO[bytes], size: int, fail: Callable[[str], PyroError]) -> None:
        self.handle, self.left, self.fail = handle, size, fail

    def read(self, size: int = -1) -> bytes:
        want = self.left if size < 0 else min(size, self.left)
        try:
            data = self.handle.read(want)
        except _READ_ERRORS as exc:
            raise self.fail(str(exc)) from None
        if len(data) < want:
            raise self.fail("it ended early")
        self.left -= want
        return data


# --- seeds ---------------------------------------------------------------------------------


def prepare_archive(source: str | os.PathLike[str] | None, out: Path) -> SeedArchive:
    """Write a checked, normalised, uncompressed tar of `source` (a directory, a .tar, .tar.gz
    or .tgz file, or None for an empty seed) to `out`; nothing is left at `out` on failure."""
    if source is None:
        _write_atomically(out, lambda tar: None)
        return SeedArchive("empty", None, 0, 0)
    given = Path(source).expanduser()
    path = given.resolve()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFoundError(
            f"seed path {given} does not exist", hint="check the path and try again"
        ) from None
    except OSError as exc:
        raise _unreadable(given, exc) from None
    if stat.S_ISDIR(st.st_mode):
        entries = _scan_directory(path)
        count, size = _checked((entry.info for entry in entries), _SEED_HINT)
        _write_atomically(out, lambda tar: _write_entries(tar, entries))
        return SeedArchive("directory", str(path), count, size)
    # The name the caller gave decides: a link named x.tar to a blob is still a tar.
    if stat.S_ISREG(st.st_mode) and given.name.lower().endswith(TAR_SUFFIXES):
        with _open_source(path) as source_tar:
            try:
                count, size = _checked(source_tar, _SEED_HINT)
            except _READ_ERRORS as exc:
                raise _corrupt(path, str(exc)) from None
            members = source_tar.getmembers()
            _write_atomically(out, lambda tar: _copy_members(source_tar, members, path, tar))
        return SeedArchive("tar_archive", str(path), count, size)
    raise InvalidArgumentError(
        f"seed path {given} is neither a directory nor a tar archive",
        hint="seed from a directory or a .tar, .tar.gz or .tgz file",
    )


def _unreadable(path: str | os.PathLike[str], exc: OSError) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"cannot read {path}: {exc.strerror or exc}",
        hint="make it readable, or seed from a path without it",
    )


def _corrupt(path: Path, reason: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"the seed archive {path} cannot be read: {reason}",
        hint="check that it is a complete .tar, .tar.gz or .tgz file",
    )


def _write_atomically(out: Path, fill: Callable[[tarfile.TarFile], None]) -> None:
    """Write a tar through fill(), put in place at `out` only once it is complete (0600:
    it holds the user's files)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        paths.atomic_file(out, 0o600) as handle,
        tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        fill(tar)


@dataclass(frozen=True)
class _Entry:
    info: tarfile.TarInfo
    path: str  # on the host, read when the entry is written


def _scan_directory(root: Path) -> list[_Entry]:
    """Every entry below root, parents before children, in a stable order."""

    def refuse(exc: OSError) -> None:
        raise _unreadable(exc.filename or root, exc)

    entries: list[_Entry] = []
    inodes: dict[tuple[int, int], str] = {}  # hard-linked files already archived
    top_length = len(str(root))
    for top, dirs, files in os.walk(root, onerror=refuse):
        dirs.sort()  # os.walk descends in this order
        prefix = top[top_length:].lstrip("/")
        for name in sorted(dirs + files):
            path = os.path.join(top, name)
            arcname = f"{prefix}/{name}" if prefix else name
            entries.append(_Entry(_describe(path, arcname, inodes), path))
    return entries


def _describe(path: str, arcname: str, inodes: dict[tuple[int, int], str]) -> tarfile.TarInfo:
    try:
        st = os.lstat(path)
        info = tarfile.TarInfo(arcname)
        info.mode, info.mtime = stat.S_IMODE(st.st_mode) & 0o777, int(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            # A second name of the same file becomes a hard link: its bytes travel once.
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in inodes:
                info.type, info.linkname = tarfile.LNKTYPE, inodes[key]
            else:
                info.size = st.st_size
                if st.st_nlink > 1:
                    inodes[key] = arcname
        else:
            raise InvalidArgumentError(
                f"the seed directory holds {path}, which is a {_special_kind(st.st_mode)}",
                hint="remove it, or seed from a tar archive without it",
            )
    except OSError as exc:
        raise _unreadable(path, exc) from None
    return info


def _special_kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    return "device node"


def _write_entries(tar: tarfile.TarFile, entries: list[_Entry]) -> None:
    for entry in entries:
        if not entry.info.isreg():
            tar.addfile(entry.info)
            continue
        with _open_regular(entry) as handle:
            tar.addfile(entry.info, _Reader(handle, entry.info.size, _changed(entry.path)))


def _changed(path: str) -> Callable[[str], PyroError]:
    return lambda reason: ConflictError(
        f"{path} changed while the seed was being made ({reason})",
        hint="seed again once nothing writes to it",
    )


@contextlib.contextmanager
def _open_regular(entry: _Entry) -> Iterator[IO[bytes]]:
    """The file scanned as `entry`, refusing one that was replaced or resized since: its size
    is already in the archive's header and its checks."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(entry.path, flags)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise _changed(entry.path)(exc.strerror or "it is gone") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise _changed(entry.path)("it became a symbolic link") from None
        raise _unreadable(entry.path, exc) from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.info.size:
            raise _changed(entry.path)("its type or size differs")
        yield handle


@contextlib.contextmanager
def _open_source(path: Path) -> Iterator[tarfile.TarFile]:
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO, opening it must not hang.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _corrupt(path, "it is no longer a regular file")
        try:
            tar = tarfile.open(fileobj=handle, mode="r:*")  # noqa: SIM115 (only opening is caught)
        except _READ_ERRORS as exc:
            raise _corrupt(path, str(exc)) from None
        with tar:
            yield tar


def _clean(name: str) -> str:
    """A checked member name without '.' and empty parts ("./a//b" is "a/b")."""
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _copy_members(
    source: tarfile.TarFile, members: list[tarfile.TarInfo], path: Path, tar: tarfile.TarFile
) -> None:
    """Copy checked members: clean names, permission bits and whole-second times only."""

    def fail(reason: str) -> PyroError:
        return _corrupt(path, reason)

    for member in members:
        info = tarfile.TarInfo(_clean(member.name))
        if not info.name:
            continue  # "." itself: the destination
        info.mode, info.mtime = member.mode & 0o777, int(member.mtime)
        if member.isdir():
            info.type = tarfile.DIRTYPE
        elif member.issym():
            info.type, info.linkname = tarfile.SYMTYPE, member.linkname
        elif member.islnk():
            info.type, info.linkname = tarfile.LNKTYPE, _clean(member.linkname)
        else:
            info.size = member.size
            data = source.extractfile(member)
            if data is None:
                raise fail(f"member {member.name!r:.200} has no data")
            tar.addfile(info, _Reader(data, member.size, fail))
            continue
        tar.addfile(info)


def read_members(tar_path: Path, names: Iterable[str], limit: int) -> dict[str, bytes]:
    """Bytes of the named regular-file members (names as stored) of a tar made by
    prepare_archive, in one pass; a member larger than `limit` bytes is left out."""
    wanted, found = set(names), dict[str, bytes]()
    sizes: dict[str, int] = {}  # regular files so far: what a later hard link holds
    with tarfile.open(tar_path, mode="r:") as tar:
        for info in tar:
            if not wanted:
                break
            if info.isreg():
                sizes[info.name] = info.size
            if info.name not in wanted:
                continue
            wanted.discard(info.name)
            size = sizes.get(info.linkname) if info.islnk() else sizes.get(info.name)
            data = tar.extractfile(info) if size is not None and size <= limit else None
            if data is not None:
                found[info.name] = data.read()
    return found


# --- exports -------------------------------------------------------------------------------


def check_output_free(output: str | os.PathLike[str]) -> Path:
    """The absolute `output`, refused when anything (even a dangling symlink) is there or a
    parent is not a directory; call it before asking the guest for anything."""
    path = Path(os.path.abspath(Path(output).expanduser()))
    if os.path.lexists(path):
        raise _taken(path)
    parent = path.parent
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir():
        raise InvalidArgumentError(
            f"output_path {path} lies under {parent}, which is not a directory",
            hint="choose another output_path",
        )
    return path


def _unexpected(reason: str) -> GuestError:
    return GuestError(f"unexpected archive from the guest: {reason}")


def extract_export(
    tar_path: Path, output: Path, artifact_type: str, redactor: Redactor | None = None
) -> Exported:
    """Place what a guest tar.create stream (in the file `tar_path`) holds at `output`, which
    must not exist: checked, unpacked into staging next to it, with the workspace's secrets
    redacted from every regular file, then renamed into place."""
    output = check_output_free(output)
    if artifact_type not in ARTIFACT_TYPES:
        raise _unexpected(f"artifact type {artifact_type!r:.100}")
    try:
        tar = tarfile.open(tar_path, mode="r:")  # noqa: SIM115 (only opening is caught)
    except (tarfile.TarError, EOFError) as exc:
        raise _unexpected(str(exc)) from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError) as exc:
            raise _unexpected(str(exc)) from None
        if artifact_type != "directory":
            _single(members, artifact_type)
        # A symlink is checked too: exporting one that leads out of /workspace would hand the
        # host a pointer to wherever the guest chose.
        count, size = _checked(members, _EXPORT_HINT)
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".pyro-export-", dir=output.parent))
        try:
            unpacked = _unpack(tar, members, staging, artifact_type)
            if redactor is not None and redactor.active:
                redact_files(unpacked, redactor)
            place(unpacked, output)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Exported(artifact_type, count, size)


def _single(members: list[tarfile.TarInfo], artifact_type: str) -> tarfile.TarInfo:
    """The one member a file or symlink export holds, named by the entry's base name."""
    if len(members) != 1:
        raise _unexpected(f"{len(members)} members for a single {artifact_type}")
    info = members[0]
    if "/" in info.name or info.name in ("", ".", ".."):
        raise _unexpected(f"member name {info.name!r:.200} for a single {artifact_type}")
    if not (info.isreg() if artifact_type == "file" else info.issym()):
        raise _unexpected(f"member {info.name!r:.200} is not a {artifact_type}")
    if "\0" in info.linkname:
        raise _unexpected(f"symlink {info.name!r:.200} has an unusable target")
    return info


def _unpack(
    tar: tarfile.TarFile, members: list[tarfile.TarInfo], staging: Path, artifact_type: str
) -> Path:
    """Unpack the checked members below staging; returns what goes to the output."""
    if artifact_type == "symlink":
        # The link is the output itself, not something inside it (its target was checked).
        link = staging / members[0].name
        os.symlink(members[0].linkname, link)
        return link
    target = staging / "tree"
    target.mkdir()
    try:
        # The data filter is a second layer under check_archive's rules.
        tar.extractall(target, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise InvalidArgumentError(str(exc), hint=_EXPORT_HINT) from None
    return target if artifact_type == "directory" else target / members[0].name


def redact_files(root: Path, redactor: Redactor) -> None:
    """Rewrite every regular file at or below `root` (ours: just unpacked) with the secrets
    redacted; modes and times stay. Symbolic links are not followed."""
    if root.is_symlink():
        return
    if root.is_file():
        _redact_file(root, redactor)
        return
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if not path.is_symlink() and path.is_file():
                _redact_file(path, redactor)


def _redact_file(path: Path, redactor: Redactor) -> None:
    stream = redactor.clone()
    fresh = path.with_name(f".{path.name}.pyro-redacted")
    with path.open("rb") as src, fresh.open("xb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(stream.feed(chunk))
        dst.write(stream.flush())
    shutil.copystat(path, fresh)
    os.replace(fresh, path)


# --- placing without replacing -------------------------------------------------------------


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's renameat2, None where libc lacks it (glibc before 2.28, some other libcs)."""
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    func.restype = ctypes.c_int
    result: Callable[..., int] = func
    return result


def _taken(output: Path) -> ConflictError:
    return ConflictError(
        f"output_path already exists: {output}", hint="choose a new path or delete it"
    )


def place(src: Path, dst: Path) -> None:
    """Rename src to dst, never replacing anything that appeared at dst since it was checked."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        ctypes.set_errno(0)
        names = (os.fsencode(src), os.fsencode(dst))
        if renameat2(_AT_FDCWD, names[0], _AT_FDCWD, names[1], _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise _taken(dst)
        if code not in (errno.EINVAL, errno.ENOSYS):  # those two: the file system can't
            raise OSError(code, os.strerror(code), str(src), None, str(dst))
    if not stat.S_ISDIR(os.lstat(src).st_mode):
        try:
            os.link(src, dst, follow_symlinks=False)  # fails on anything at dst
        except FileExistsError:
            raise _taken(dst) from None
        except OSError:
            pass  # no hard links here: fall back to checking first
        else:
            os.unlink(src)
            return
    # Last resort, with a window between the check and the rename.
    if os.path.lexists(dst):
        raise _taken(dst)
    os.rename(src, dst)
