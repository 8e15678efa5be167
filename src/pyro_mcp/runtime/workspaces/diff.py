"""A workspace's changes against its create-time baseline, from manifests, with git patches.

The guest never ships the tree: it sends a manifest that hashes only the files whose size or
mtime moved since the baseline, the host compares it with the baseline manifest it kept, and
the caller fetches just the small changed files (wanted_bytes) for render to patch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_mcp import paths
from pyro_mcp.agent_client.files import Manifest, ManifestEntry
from pyro_mcp.errors import GuestError, IntegrityError

MAX_TEXT_BYTES = 1024 * 1024  # a file bigger than this on either side gets no text patch
MAX_PATCH_BYTES = 8 * 1024 * 1024  # bound on the combined patch
CONTEXT_LINES = 3
WORKSPACE_PREFIX = "/workspace/"
STATUSES = ("added", "modified", "deleted", "type_changed")

_SCHEMA = 1
_NULL_ID = "0" * 40
_NO_NEWLINE = "\\ No newline at end of file\n"
# git's C-style quoting: these control bytes get a letter, the rest of the unusual ones octal.
_LETTERS = {7: "a", 8: "b", 9: "t", 10: "n", 11: "v", 12: "f", 13: "r", 34: '"', 92: "\\"}

_Op = tuple[str, int, int, int, int]  # difflib opcode: tag, a start, a stop, b start, b stop


@dataclass(frozen=True)
class Baseline:
    """The manifest taken right after the seed was extracted; every file has its sha256."""

    entries: dict[str, ManifestEntry]  # by relative path
    started_ns: int

    def since(self) -> dict[str, tuple[int, int]]:
        """(size, mtime_ns) of files safe to trust: racy ones (mtime_ns >= started_ns) are left
        out so the guest re-hashes them."""
        return {
            path: (entry.size, entry.mtime_ns)
            for path, entry in self.entries.items()
            if entry.type == "file" and entry.mtime_ns < self.started_ns
        }


@dataclass(frozen=True)
class Change:
    """One changed path of a workspace."""

    path: str  # relative to /workspace
    status: str  # added, modified, deleted or type_changed
    artifact_type: str  # the current type (the baseline's for deleted)
    baseline_type: str | None = None  # the baseline's type (None for added); type_changed needs it


# --- the baseline on disk -----------------------------------------------------------------


def save_baseline(path: Path, manifest: Manifest) -> Baseline:
    """Keep a complete, fully hashed manifest as the baseline (compact JSON, written atomically)."""
    if manifest.truncated:
        raise GuestError(
            "the workspace has too many entries to keep a baseline of",
            hint="seed the workspace with fewer files",
        )
    if any(entry.type == "file" and entry.sha256 is None for entry in manifest.entries):
        raise GuestError("the baseline manifest lacks the sha256 of a file")
    rows = [[e.path, e.type, e.size, e.mtime_ns, e.sha256, e.link_target] for e in manifest.entries]
    doc = {"schema": _SCHEMA, "started_ns": manifest.started_ns, "entries": rows}
    paths.write_atomic(path, json.dumps(doc, separators=(",", ":")).encode())
    return Baseline({entry.path: entry for entry in manifest.entries}, manifest.started_ns)


def load_baseline(path: Path) -> Baseline:
    """The baseline save_baseline kept; IntegrityError if it is missing or damaged."""
    try:
        doc = json.loads(path.read_bytes())
        if doc["schema"] != _SCHEMA or type(doc["started_ns"]) is not int:
            raise ValueError("schema")
        entries = [_entry(row) for row in doc["entries"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(
            f"the workspace baseline {path} cannot be read ({exc})",
            hint="the workspace cannot be diffed; delete and recreate it",
        ) from None
    return Baseline({entry.path: entry for entry in entries}, doc["started_ns"])


def _entry(row: Any) -> ManifestEntry:
    path, kind, size, mtime_ns, sha256, link_target = row
    if not (isinstance(path, str) and isinstance(kind, str)):
        raise ValueError("entry path or type")
    if type(size) is not int or type(mtime_ns) is not int:
        raise ValueError("entry size or mtime")
    if not all(value is None or isinstance(value, str) for value in (sha256, link_target)):
        raise ValueError("entry sha256 or link target")
    if kind == "file" and sha256 is None:
        raise ValueError("a file without its sha256")
    return ManifestEntry(path, kind, size, mtime_ns, sha256, link_target)


# --- comparing manifests ------------------------------------------------------------------


def changes(baseline: Baseline, current: Manifest) -> list[Change]:
    """What differs between the baseline and a manifest taken with baseline.since(), by path.

    A current file with sha256 None matched `since`, so it is unchanged; symlinks compare their
    targets. An added or deleted directory is reported only when nothing below it is (an empty
    directory that appeared or vanished). A truncated manifest is refused: the entries it left
    out would read as deleted.
    """
    if current.truncated:
        raise GuestError(
            "the workspace has too many entries to diff",
            hint="remove files from the workspace (or diff a smaller tree by hand)",
        )
    now = {entry.path: entry for entry in current.entries}
    found = []
    for path in baseline.entries.keys() | now.keys():
        change = _compare(path, baseline.entries.get(path), now.get(path))
        if change is not None:
            found.append(change)
    covered = {parent for change in found for parent in _parents(change.path)}
    return sorted((c for c in found if not _covered_directory(c, covered)), key=lambda c: c.path)


def _compare(path: str, old: ManifestEntry | None, new: ManifestEntry | None) -> Change | None:
    if old is None:
        return None if new is None else Change(path, "added", new.type)
    if new is None:
        return Change(path, "deleted", old.type, old.type)
    if old.type != new.type:
        return Change(path, "type_changed", new.type, old.type)
    if new.type == "file":
        same = new.sha256 is None or new.sha256 == old.sha256
    else:
        same = new.type != "symlink" or new.link_target == old.link_target
    return None if same else Change(path, "modified", new.type, old.type)


def _parents(path: str) -> Iterable[str]:
    parts = path.split("/")
    return ("/".join(parts[:end]) for end in range(1, len(parts)))


def _covered_directory(change: Change, covered: set[str]) -> bool:
    return (
        change.artifact_type == "directory"
        and change.status in ("added", "deleted")
        and change.path in covered
    )


def _sides(change: Change) -> tuple[str | None, str | None]:
    """The baseline's and the current type at a change's path (None where nothing is)."""
    if change.status == "added":
        return None, change.artifact_type
    if change.status == "deleted":
        return change.artifact_type, None
    if change.status == "type_changed":
        return change.baseline_type or "unknown", change.artifact_type
    return change.artifact_type, change.artifact_type


def _patchable(old: str | None, new: str | None) -> bool:
    """Whether a text patch can express the change: a file on one side at least, and nothing
    but a file, a directory or nothing on either (git patches here carry no symlinks)."""
    plain = (None, "directory", "file")
    return "file" in (old, new) and old in plain and new in plain


def wanted_bytes(
    changes: list[Change], baseline: Baseline, current: Manifest
) -> tuple[list[str], list[str]]:
    """(paths to read from the baseline tar, paths to read from the guest): the regular files
    on each side of a patchable change whose manifest size is at most MAX_TEXT_BYTES."""
    now = {entry.path: entry for entry in current.entries}
    from_baseline, from_guest = [], []
    for change in changes:
        old, new = _sides(change)
        if not _patchable(old, new):
            continue
        if old == "file" and _small(baseline.entries.get(change.path)):
            from_baseline.append(change.path)
        if new == "file" and _small(now.get(change.path)):
            from_guest.append(change.path)
    return from_baseline, from_guest


def _small(entry: ManifestEntry | None) -> bool:
    return entry is not None and entry.type == "file" and entry.size <= MAX_TEXT_BYTES


# --- rendering ----------------------------------------------------------------------------


def render(
    changes: list[Change], old: Mapping[str, bytes], new: Mapping[str, bytes]
) -> dict[str, Any]:
    """The diff result (without workspace_id) with a git patch for every text file change.

    old and new hold the bytes of the files the caller fetched, by relative path; a file
    missing there (too big, not fetched) is non_text, like symlinks, binaries and other
    non-directories. Text files past the MAX_PATCH_BYTES bound get no patch and count as
    neither text_patched nor non_text; patch_truncated says so.
    """
    summary = dict.fromkeys(("total", *STATUSES, "text_patched", "non_text"), 0)
    entries, pieces, size, truncated = [], [], 0, False
    for change in changes:
        summary["total"] += 1
        summary[change.status] += 1
        sides = _text_sides(change, old, new)
        patch = None
        if sides is not None and not truncated:
            patch = _git_patch(change.path, *sides)
            if patch is not None and size + _cost(patch) > MAX_PATCH_BYTES:
                patch, truncated = None, True
        if patch is not None:
            pieces.append(patch)
            size += _cost(patch)
            summary["text_patched"] += 1
        elif sides is None and _has_content(change):
            summary["non_text"] += 1
        entries.append(
            {
                "path": WORKSPACE_PREFIX + change.path,
                "status": change.status,
                "artifact_type": change.artifact_type,
                "text_patch": patch,
            }
        )
    return {
        "changed": bool(changes),
        "summary": summary,
        "entries": entries,
        "patch": "".join(pieces),
        "patch_truncated": truncated,
    }


def _cost(patch: str) -> int:
    return len(patch.encode("utf-8", "surrogateescape"))


def _has_content(change: Change) -> bool:
    """Whether a change involves more than directories (which no patch needs to carry)."""
    return any(kind not in (None, "directory") for kind in _sides(change))


def _text_sides(
    change: Change, old: Mapping[str, bytes], new: Mapping[str, bytes]
) -> tuple[bytes | None, bytes | None] | None:
    """The bytes of each side (None where no file is), or None when a text patch cannot
    express the change."""
    kinds = _sides(change)
    if not _patchable(*kinds):
        return None
    before = old.get(change.path) if kinds[0] == "file" else None
    after = new.get(change.path) if kinds[1] == "file" else None
    for kind, data in zip(kinds, (before, after), strict=True):
        if kind == "file" and not _is_text(data):
            return None
    return before, after


def _is_text(data: bytes | None) -> bool:
    if data is None or len(data) > MAX_TEXT_BYTES or b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _git_patch(path: str, before: bytes | None, after: bytes | None) -> str | None:
    """The `git diff` section for one file (None if both sides hold the same bytes)."""
    old_lines, new_lines = _split(before), _split(after)
    hunks = _hunks(old_lines, new_lines)
    if before is not None and after is not None and not hunks:
        return None  # rewritten back between the manifest and the read
    a_name, b_name = _quote("a/" + path), _quote("b/" + path)
    head = [f"diff --git {a_name} {b_name}\n"]
    if before is None:
        head.append("new file mode 100644\n")
    elif after is None:
        head.append("deleted file mode 100644\n")
    head.append(f"index {_blob_id(before)}..{_blob_id(after)}\n")
    if hunks:
        # Like git, a tab ends a name with a space so that patch tools see where it stops.
        tab = "\t" if " " in path else ""
        head.append(f"--- {a_name + tab if before is not None else '/dev/null'}\n")
        head.append(f"+++ {b_name + tab if after is not None else '/dev/null'}\n")
    return "".join(head + hunks)


def _split(data: bytes | None) -> list[str]:
    """Lines with their newline; as in git only a newline ends a line (no CR or form feed)."""
    if not data:
        return []
    parts = data.decode("utf-8").split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _blob_id(data: bytes | None) -> str:
    """git's object id of a blob, so the patch can be applied with --3way too."""
    if data is None:
        return _NULL_ID
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _quote(name: str) -> str:
    """A name as git writes it in headers: C-quoted when it holds control characters, quotes,
    backslashes or non-ASCII bytes (core.quotePath), else as is."""
    raw = name.encode("utf-8", "surrogateescape")
    if all(0x20 <= byte < 0x7F and byte not in (34, 92) for byte in raw):
        return name
    out = []
    for byte in raw:
        if byte in _LETTERS:
            out.append("\\" + _LETTERS[byte])
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


# --- hunks --------------------------------------------------------------------------------


def _hunks(old: list[str], new: list[str]) -> list[str]:
    """Unified hunks (header and marked lines) turning old into new."""
    out = []
    for group in _group(_opcodes(old, new), CONTEXT_LINES):
        first, last = group[0], group[-1]
        out.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out += _marked(" ", old[i1:i2])
            else:
                out += _marked("-", old[i1:i2]) + _marked("+", new[j1:j2])
    return out


def _opcodes(old: list[str], new: list[str]) -> list[_Op]:
    """difflib's opcodes, with the common head and tail set aside first: quicker, and it keeps
    SequenceMatcher's popular-line heuristic from pairing the changes with far-off lines."""
    head = 0
    limit = min(len(old), len(new))
    while head < limit and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < limit - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    ops: list[_Op] = [("equal", 0, head, 0, head)] if head else []
    matcher = difflib.SequenceMatcher(
        None, old[head : len(old) - tail], new[head : len(new) - tail]
    )
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        ops.append((tag, i1 + head, i2 + head, j1 + head, j2 + head))
    if tail:
        ops.append(("equal", len(old) - tail, len(old), len(new) - tail, len(new)))
    return ops


def _group(ops: list[_Op], context: int) -> list[list[_Op]]:
    """The opcodes cut into hunks: changes closer than 2 * context lines share one, and each
    hunk keeps up to `context` unchanged lines around its changes."""
    if all(op[0] == "equal" for op in ops):
        return []
    groups: list[list[_Op]] = []
    current: list[_Op] = []
    last = len(ops) - 1
    for index, (tag, i1, i2, j1, j2) in enumerate(ops):
        if tag != "equal" or (0 < index < last and i2 - i1 <= 2 * context):
            current.append((tag, i1, i2, j1, j2))
            continue
        if index > 0:  # the context after the changes before this run
            current.append((tag, i1, min(i2, i1 + context), j1, min(j2, j1 + context)))
            groups.append(current)
        skip = max(0, i2 - i1 - context)  # the context before the changes after it
        current = [(tag, i1 + skip, i2, j1 + skip, j2)] if index < last else []
    if current:
        groups.append(current)
    return groups


def _range(start: int, stop: int) -> str:
    """A hunk header range: 1-based start and length; an empty range names the line before."""
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"


def _marked(mark: str, lines: list[str]) -> list[str]:
    return [
        mark + line if line.endswith("\n") else f"{mark}{line}\n{_NO_NEWLINE}" for line in lines
    ]
