"""Files of a started workspace: list, read, write, patch, sync push, export and diff.

Paths are checked twice: here, by the guest protocol's own rules (nothing outside /workspace,
no `..`), before anything is sent, and again in the guest, which never follows a link out.
Everything from the guest is checked again on the host before it touches a host file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyro_mcp.agent_client.client import GuestClient
from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.protocol import file_ops as pf
from pyro_mcp.protocol.ops import ParamError
from pyro_mcp.runtime import launch
from pyro_mcp.runtime.workspaces import archives, diff, records
from pyro_mcp.runtime.workspaces.service import BASELINE_MANIFEST, BASELINE_TAR, WorkspaceService

MAX_READ_BYTES = 1024 * 1024
MAX_TEXT_BYTES = 1024 * 1024


def _check_max_bytes(max_bytes: Any) -> int:
    if (
        isinstance(max_bytes, bool)
        or not isinstance(max_bytes, int)
        or not (1 <= max_bytes <= MAX_READ_BYTES)
    ):
        raise InvalidArgumentError(
            f"max_bytes must be between 1 and {MAX_READ_BYTES}, got {max_bytes!r}",
            hint="read a bigger file in pieces with exec (e.g. `tail -c`) or export it",
        )
    return max_bytes


class FileReader:
    """list and read through a guest that `_client` provides: the workspace's own (here), or
    a helper VM reading its stopped disk (disk_tools.py)."""

    def __init__(self, service: WorkspaceService) -> None:
        self.service = service

    def _client(
        self, workspace_id: str, op: str
    ) -> contextlib.AbstractContextManager[tuple[dict[str, Any], GuestClient]]:
        raise NotImplementedError

    def list(
        self, workspace_id: str, *, path: str = records.WORKSPACE_PATH, recursive: bool = False
    ) -> dict[str, Any]:
        """The entries of a directory (all below it with recursive), or the entry a path names."""
        with self._client(workspace_id, "file list") as (row, client):
            listing = client.list_files(path, recursive=recursive)
        return {
            "workspace_id": workspace_id,
            "path": _logical(path),
            "recursive": recursive,
            "entries": [
                {
                    "path": e.path,
                    "artifact_type": e.artifact_type,
                    "size_bytes": e.size_bytes,
                    "link_target": e.link_target,
                }
                for e in listing.entries
            ],
            "truncated": listing.truncated,
            "execution_mode": row["execution_mode"],
        }

    def read(
        self, workspace_id: str, path: str, *, max_bytes: int = pf.DEFAULT_READ_BYTES
    ) -> dict[str, Any]:
        """The first max_bytes of a file as text; a bigger file comes back truncated."""
        max_bytes = _check_max_bytes(max_bytes)
        with self._client(workspace_id, "file read") as (row, client):
            got = client.read_file(path, max_bytes=max_bytes)
        content = got.content
        if got.truncated:
            # The cut may fall inside a secret: whatever could begin one stays out (the whole
            # result is redacted on its way out, as every workspace result is).
            content = self.service.redactor(workspace_id).clone().feed(content)
        return {
            "workspace_id": workspace_id,
            "path": got.path,
            "size_bytes": got.size_bytes,
            "max_bytes": max_bytes,
            # A cut may split a UTF-8 sequence, and binary files have no text form.
            "content": content.decode("utf-8", "replace"),
            "truncated": got.truncated,
            "execution_mode": row["execution_mode"],
        }


class WorkspaceFiles(FileReader):
    """The file operations of a started workspace."""

    @contextlib.contextmanager
    def _client(self, workspace_id: str, op: str) -> Iterator[tuple[dict[str, Any], GuestClient]]:
        with (
            self.service.using(workspace_id, op) as (row, vm_dir),
            launch.connect(vm_dir) as client,
        ):
            yield row, client

    def write(self, workspace_id: str, path: str, *, text: str) -> dict[str, Any]:
        """Create or replace a text file atomically (parents are created)."""
        if not isinstance(text, str):
            raise InvalidArgumentError("text must be a string")
        data = text.encode("utf-8", "surrogateescape")
        if len(data) > MAX_TEXT_BYTES:
            raise InvalidArgumentError(
                f"text is {len(data)} bytes; file write takes at most {MAX_TEXT_BYTES}",
                hint="push bigger files with sync push",
            )
        with self._client(workspace_id, "file write") as (row, client):
            done = client.write_file(path, data)
        return {
            "workspace_id": workspace_id,
            "path": done.path,
            "size_bytes": done.size_bytes,
            "bytes_written": done.bytes_written,
            "execution_mode": row["execution_mode"],
        }

    def apply_patch(self, workspace_id: str, *, patch: str) -> dict[str, Any]:
        """Apply a unified diff (git's too: new, deleted and renamed files); all or nothing."""
        if not isinstance(patch, str):
            raise InvalidArgumentError("patch must be a string holding a unified diff")
        with self._client(workspace_id, "patch apply") as (row, client):
            changes = client.apply_patch(patch)
        summary = {"total": len(changes), "added": 0, "modified": 0, "deleted": 0, "renamed": 0}
        for change in changes:
            summary[change.status] += 1
        return {
            "workspace_id": workspace_id,
            "changed": bool(changes),
            "summary": summary,
            "entries": [{"path": c.path, "status": c.status, "source": c.source} for c in changes],
            "patch": patch,
            "execution_mode": row["execution_mode"],
        }

    def push(
        self, workspace_id: str, source_path: str, *, dest: str = records.WORKSPACE_PATH
    ) -> dict[str, Any]:
        """Unpack a host directory or .tar/.tar.gz/.tgz over `dest` (added to, never pruned)."""
        _logical(dest, "dest")
        directory = self.service.known_directory(workspace_id)
        with _scratch(directory) as tar_path:
            seed = archives.prepare_archive(source_path, tar_path)
            with (
                self._client(workspace_id, "sync push") as (row, client),
                tar_path.open("rb") as handle,
            ):
                done = client.extract_tar(handle, dest=dest)
        return {
            "workspace_id": workspace_id,
            "execution_mode": row["execution_mode"],
            "workspace_sync": {
                "mode": seed.mode,
                "source_path": seed.source_path,
                "destination": _logical(dest),
                "entry_count": done.entry_count,
                "bytes_written": done.bytes_written,
            },
        }

    def export(self, workspace_id: str, path: str, *, output_path: str) -> dict[str, Any]:
        """Copy a file or directory of /workspace to a new host path, atomically."""
        _logical(path)
        output = archives.check_output_free(Path(output_path))
        self.service.known_directory(workspace_id)
        # The guest's tar lands beside the output, never in the state directory: it holds the
        # files before their secrets are redacted.
        output.parent.mkdir(parents=True, exist_ok=True)
        with _scratch(output.parent) as tar_path:
            with (
                self._client(workspace_id, "export") as (row, client),
                tar_path.open("wb") as sink,
            ):
                made = client.create_tar(path, sink.write)
            assert made.artifact_type is not None
            redactor = self.service.redactor(workspace_id)
            done = archives.extract_export(tar_path, output, made.artifact_type, redactor)
        return {
            "workspace_id": workspace_id,
            "workspace_path": _logical(path),
            "output_path": str(output),
            "artifact_type": done.artifact_type,
            "entry_count": done.entry_count,
            "bytes_written": done.bytes_written,
            "execution_mode": row["execution_mode"],
        }

    def diff(self, workspace_id: str) -> dict[str, Any]:
        """What changed in /workspace since the baseline: a summary and a git-style patch.
        Only files whose size or mtime moved are hashed in the guest; only changed text files
        cross to the host."""
        with self._client(workspace_id, "diff") as (row, client):
            directory = self.service.directory(row["workspace_id"])
            baseline = diff.load_baseline(directory / BASELINE_MANIFEST)
            current = client.manifest(since=baseline.since())
            changes = diff.changes(baseline, current)
            old_paths, new_paths = diff.wanted_bytes(changes, baseline, current)
            new = {}
            for rel in new_paths:
                path = f"{records.WORKSPACE_PATH}/{rel}"
                got = client.read_file(path, max_bytes=diff.MAX_TEXT_BYTES)
                if not got.truncated:
                    new[rel] = got.content
        old = archives.read_members(directory / BASELINE_TAR, old_paths, diff.MAX_TEXT_BYTES)
        return {"workspace_id": workspace_id, **diff.render(changes, old, new)}


def _logical(path: str, what: str = "path") -> str:
    """The /workspace path `path` names; InvalidArgumentError when it leaves /workspace."""
    try:
        return pf.logical(pf.workspace_parts(path, what))
    except ParamError as exc:
        raise InvalidArgumentError(str(exc), hint="name a path inside /workspace") from None


@contextlib.contextmanager
def _scratch(directory: Path) -> Iterator[Path]:
    """A private temporary file in `directory`, removed afterwards."""
    fd, name = tempfile.mkstemp(prefix=".scratch-", suffix=".tar", dir=directory)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
