"""Host side of the workspace operations: files, archives, manifests and patches.

GuestClient inherits these methods. Parameters go through the agent's own rules
(protocol.file_ops) before they are sent; every answer is checked for type, size and
consistency with the output that came with it, because the guest is hostile.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from pyro_mcp.agent_client.base import Waiter, count, field, malformed
from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.protocol import file_ops as pf
from pyro_mcp.protocol import frames, ops

if TYPE_CHECKING:
    from pyro_mcp.agent_client.base import OutputCallback

FILE_TIMEOUT = 60.0
ARCHIVE_TIMEOUT = 900.0
PATCH_TIMEOUT = 2 * 300.0 + 10.0  # the agent gives each of its two git runs 300 s
# Bounds on the JSON lines a listing may take (entries are bounded by count in the guest).
_LIST_DATA = 96 * 1024 * 1024
_MANIFEST_DATA = 256 * 1024 * 1024
_PATCH_DATA = 96 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DATA = (frames.DATA,)

Source = bytes | bytearray | memoryview | Iterable[bytes] | IO[bytes]


@dataclass(frozen=True)
class FileEntry:
    path: str  # /workspace/...
    artifact_type: str  # file, directory, symlink or other
    size_bytes: int
    link_target: str | None


@dataclass(frozen=True)
class FileListing:
    entries: tuple[FileEntry, ...]
    truncated: bool  # more than file_ops.MAX_LIST_ENTRIES entries


@dataclass(frozen=True)
class FileContent:
    path: str
    content: bytes  # the first max_bytes of the file
    size_bytes: int
    truncated: bool


@dataclass(frozen=True)
class WriteResult:
    path: str
    size_bytes: int
    bytes_written: int


@dataclass(frozen=True)
class ArchiveResult:
    entry_count: int
    bytes_written: int  # tar.extract: file bytes unpacked; tar.create: bytes of the tar
    artifact_type: str | None = None  # tar.create: what the path named
    skipped: int = 0  # tar.create: sockets, devices and FIFOs left out


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # relative to the manifest's directory
    type: str
    size: int
    mtime_ns: int
    sha256: str | None  # None for a non-file, or a file unchanged since the since document
    link_target: str | None = None


@dataclass(frozen=True)
class Manifest:
    entries: tuple[ManifestEntry, ...]
    truncated: bool
    hashed: int
    started_ns: int  # guest clock at the start; see files.manifest on racy entries


@dataclass(frozen=True)
class PatchChange:
    path: str
    status: str  # added, modified, deleted or renamed
    source: str | None = None  # where a renamed (or copied) file came from


def _validate(op: str, params: dict[str, Any]) -> pf.FileParams:
    try:
        return pf.parse_file_params(op, params)
    except ops.ParamError as exc:
        raise InvalidArgumentError(str(exc)) from None


def _lines(waiter: Waiter, result: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The JSON-lines output of a request, checked against the counts in its result."""
    data = bytes(waiter.output[frames.DATA])
    if count(result, "data_bytes", len(data)) != len(data):
        raise malformed(f"{waiter.op} result (data_bytes disagrees with the output)")
    entries = count(result, "entry_count", limit)
    if data and not data.endswith(b"\n"):
        raise malformed(f"{waiter.op} output (a line is cut short)")
    try:
        items = [json.loads(line) for line in data.split(b"\n")[:-1]]
    except (ValueError, RecursionError):
        raise malformed(f"{waiter.op} output (not JSON lines)") from None
    if len(items) != entries or not all(isinstance(item, dict) for item in items):
        raise malformed(f"{waiter.op} output (entry_count disagrees with the lines)")
    return items


def _path(value: object, *, relative: bool = False) -> pf.Parts:
    """A path the guest reports: well-formed, below /workspace (or relative to a directory)."""
    if not isinstance(value, str) or relative == value.startswith("/"):
        raise malformed("path")
    try:
        parts = pf.workspace_parts(value)
    except ops.ParamError:
        raise malformed("path") from None
    if not parts:
        raise malformed("path (names the workspace itself)")
    return parts


def _optional_str(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise malformed("result (expected a string or null)")
    return value


def _kind(value: object) -> str:
    if value not in pf.ARTIFACT_TYPES:
        raise malformed("entry type")
    return str(value)


def _parse_listing(requested: pf.Parts) -> Callable[[Waiter, dict[str, Any]], FileListing]:
    def parse(waiter: Waiter, result: dict[str, Any]) -> FileListing:
        entries = []
        for item in _lines(waiter, result, pf.MAX_LIST_ENTRIES):
            parts = _path(item.get("path"))
            if parts[: len(requested)] != requested:
                raise malformed("file.list entry (outside the listed path)")
            entries.append(
                FileEntry(
                    path=pf.logical(parts),
                    artifact_type=_kind(item.get("artifact_type")),
                    size_bytes=count(item, "size_bytes", 2**63),
                    link_target=_optional_str(item.get("link_target")),
                )
            )
        return FileListing(tuple(entries), field(result, "truncated", bool))

    return parse


def _parse_read(waiter: Waiter, result: dict[str, Any]) -> FileContent:
    content = bytes(waiter.output[frames.DATA])
    if count(result, "bytes_read", waiter.max_output) != len(content):
        raise malformed("file.read result (bytes_read disagrees with the data)")
    return FileContent(
        path="",  # read_file fills in the path it asked for
        content=content,
        size_bytes=count(result, "size_bytes", 2**63),
        truncated=field(result, "truncated", bool),
    )


def _parse_write(sent: int) -> Callable[[Waiter, dict[str, Any]], tuple[int, int]]:
    def parse(waiter: Waiter, result: dict[str, Any]) -> tuple[int, int]:
        if count(result, "bytes_written", sent) != sent:
            raise malformed("file.write result (bytes_written is not what was sent)")
        return count(result, "size_bytes", 2**63), sent

    return parse


def _parse_deleted(waiter: Waiter, result: dict[str, Any]) -> str:
    return _kind(result.get("artifact_type"))


def _parse_extracted(waiter: Waiter, result: dict[str, Any]) -> ArchiveResult:
    return ArchiveResult(
        entry_count=count(result, "entry_count", pf.MAX_ARCHIVE_ENTRIES),
        bytes_written=count(result, "bytes_written", pf.MAX_EXTRACT_BYTES),
    )


def _parse_created(waiter: Waiter, result: dict[str, Any]) -> ArchiveResult:
    received = waiter.received[frames.DATA]
    if count(result, "bytes_written", received) != received:
        raise malformed("tar.create result (bytes_written disagrees with the data)")
    return ArchiveResult(
        entry_count=count(result, "entry_count", 2**63),
        bytes_written=received,
        artifact_type=_kind(result.get("artifact_type")),
        skipped=count(result, "skipped", 2**63),
    )


def _parse_manifest(waiter: Waiter, result: dict[str, Any]) -> Manifest:
    entries = []
    for item in _lines(waiter, result, pf.MAX_MANIFEST_ENTRIES):
        digest = _optional_str(item.get("sha256"))
        if digest is not None and not _SHA256.fullmatch(digest):
            raise malformed("tree.manifest entry (sha256)")
        entries.append(
            ManifestEntry(
                path="/".join(_path(item.get("path"), relative=True)),
                type=_kind(item.get("type")),
                size=count(item, "size", 2**63),
                mtime_ns=field(item, "mtime_ns", int),
                sha256=digest,
                link_target=_optional_str(item.get("link_target")),
            )
        )
    return Manifest(
        tuple(entries),
        truncated=field(result, "truncated", bool),
        hashed=count(result, "hashed", len(entries)),
        started_ns=field(result, "started_ns", int),
    )


def _parse_patch(waiter: Waiter, result: dict[str, Any]) -> tuple[PatchChange, ...]:
    changes = []
    for item in _lines(waiter, result, pf.MAX_PATCH_FILES):
        status, source = item.get("status"), item.get("source")
        if status not in pf.PATCH_STATUSES:
            raise malformed("patch.apply entry (status)")
        changes.append(
            PatchChange(
                path=pf.logical(_path(item.get("path"))),
                status=str(status),
                source=None if source is None else pf.logical(_path(source)),
            )
        )
    return tuple(changes)


def _chunks(source: Source, limit: int) -> Iterator[bytes]:
    """The caller's input as chunks, refused once it passes `limit` bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        pieces: Iterable[bytes] = [bytes(source)]
    elif hasattr(source, "read"):
        reader = source
        pieces = iter(lambda: reader.read(frames.MAX_BODY_BYTES), b"")
    else:
        pieces = source
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > limit:
            raise InvalidArgumentError(f"the input is larger than the limit of {limit} bytes")
        yield piece


class FileOps:
    """The workspace operations of GuestClient (a mixin: GuestClient provides _call)."""

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
        raise NotImplementedError

    def list_files(
        self, path: str = pf.WORKSPACE, *, recursive: bool = False, timeout: float = FILE_TIMEOUT
    ) -> FileListing:
        """A directory's children (all descendants with recursive), or the entry a path names."""
        params = {"path": path, "recursive": recursive}
        parse = _parse_listing(_validate("file.list", params).parts)
        listing: FileListing = self._call(
            "file.list", params, timeout, parse, max_output=_LIST_DATA, streams=_DATA
        )
        return listing

    def read_file(
        self, path: str, *, max_bytes: int = pf.DEFAULT_READ_BYTES, timeout: float = FILE_TIMEOUT
    ) -> FileContent:
        """The first max_bytes of a file; a bigger file comes back truncated, not as an error."""
        params = {"path": path, "max_bytes": max_bytes}
        parts = _validate("file.read", params).parts
        content: FileContent = self._call(
            "file.read", params, timeout, _parse_read, max_output=max_bytes, streams=_DATA
        )
        return dataclasses.replace(content, path=pf.logical(parts))

    def write_file(
        self,
        path: str,
        data: bytes,
        *,
        create_parents: bool = True,
        timeout: float = FILE_TIMEOUT,
    ) -> WriteResult:
        """Replace or create a file atomically (a symlinked parent or a non-file is refused)."""
        params = {"path": path, "create_parents": create_parents}
        parts = _validate("file.write", params).parts
        if len(data) > pf.MAX_WRITE_BYTES:
            raise InvalidArgumentError(f"file.write takes at most {pf.MAX_WRITE_BYTES} bytes")
        parse = _parse_write(len(data))
        size, written = self._call("file.write", params, timeout, parse, source=[bytes(data)])
        return WriteResult(pf.logical(parts), size, written)

    def delete_file(
        self, path: str, *, recursive: bool = False, timeout: float = FILE_TIMEOUT
    ) -> str:
        """Remove a file or symlink (a directory needs recursive); returns what it was."""
        params = {"path": path, "recursive": recursive}
        _validate("file.delete", params)
        kind: str = self._call("file.delete", params, timeout, _parse_deleted)
        return kind

    def extract_tar(
        self, source: Source, *, dest: str = pf.WORKSPACE, timeout: float = ARCHIVE_TIMEOUT
    ) -> ArchiveResult:
        """Unpack a plain or gzip tar (bytes, chunks or a binary file) into dest. The guest
        checks every member before it writes anything."""
        params = {"dest": dest}
        _validate("tar.extract", params)
        chunks = _chunks(source, pf.MAX_ARCHIVE_BYTES)
        done: ArchiveResult = self._call(
            "tar.extract", params, timeout, _parse_extracted, source=chunks
        )
        return done

    def create_tar(
        self,
        path: str,
        sink: Callable[[bytes], object],
        *,
        max_bytes: int = pf.MAX_ARCHIVE_BYTES,
        timeout: float = ARCHIVE_TIMEOUT,
    ) -> ArchiveResult:
        """Stream a tar of a workspace path to sink(chunk), which runs on the connection's
        reader thread (keep it quick); more than max_bytes fails the request."""
        params = {"path": path}
        _validate("tar.create", params)

        def forward(stream: str, data: bytes) -> None:
            sink(data)

        done: ArchiveResult = self._call(
            "tar.create",
            params,
            timeout,
            _parse_created,
            forward,
            max_bytes,
            keep=False,
            streams=_DATA,
        )
        return done

    def manifest(
        self,
        path: str = pf.WORKSPACE,
        *,
        since: Mapping[str, tuple[int, int]] | None = None,
        timeout: float = ARCHIVE_TIMEOUT,
    ) -> Manifest:
        """Every entry below a directory; files get a sha256 unless their (size, mtime_ns) match
        `since` (paths relative to the directory), in which case sha256 is None."""
        params: dict[str, Any] = {"path": path}
        source = None
        if since is not None:
            params["since"] = True
            doc = {key: [int(size), int(mtime)] for key, (size, mtime) in since.items()}
            source = [json.dumps(doc, separators=(",", ":")).encode()]
            try:
                pf.parse_since(source[0])
            except ops.ParamError as exc:
                raise InvalidArgumentError(str(exc)) from None
        _validate("tree.manifest", params)
        found: Manifest = self._call(
            "tree.manifest",
            params,
            timeout,
            _parse_manifest,
            max_output=_MANIFEST_DATA,
            streams=_DATA,
            source=source,
        )
        return found

    def apply_patch(
        self, patch: str | bytes, *, timeout: float = PATCH_TIMEOUT
    ) -> tuple[PatchChange, ...]:
        """Apply a unified or git diff with git in the guest; a patch that does not apply
        changes nothing. Paths leaving the workspace are refused here already."""
        data = patch.encode("utf-8", "surrogateescape") if isinstance(patch, str) else patch
        if len(data) > pf.MAX_PATCH_BYTES:
            raise InvalidArgumentError(f"patches are limited to {pf.MAX_PATCH_BYTES} bytes")
        try:
            files = pf.parse_patch(data.decode("utf-8", "surrogateescape"))
        except ops.ParamError as exc:
            raise InvalidArgumentError(str(exc)) from None
        if not files:
            raise InvalidArgumentError("the patch changes no file; expected a unified diff")
        changes: tuple[PatchChange, ...] = self._call(
            "patch.apply",
            {},
            timeout,
            _parse_patch,
            max_output=_PATCH_DATA,
            streams=_DATA,
            source=[data],
        )
        return changes
