"""Guest protocol, workspace part: the parameters of the file, archive and patch operations.

Shared by the host (which rejects a bad request before sending it) and the agent (which applies
the same rules again), so it stays stdlib-only and Python 3.11 compatible, like frames.py.

Paths name something inside the workspace: either absolute under ``/workspace`` or relative to
it. ``..`` is refused outright (even when it would stay inside), so a path's meaning never
depends on what is on disk; ``.`` and repeated slashes are dropped. The agent then resolves the
components without following symbolic links out of the workspace.

Operations (params -> result; "lines" means JSON objects, one per line, as ``data`` output):

- ``file.list`` {path, recursive} -> {entry_count, truncated, data_bytes}; lines
  {path, artifact_type, size_bytes, link_target}.
- ``file.read`` {path, max_bytes} -> {path, size_bytes, bytes_read, truncated}; the first
  max_bytes of the file as ``data`` output. A larger file is not an error.
- ``file.write`` {path, create_parents} + input -> {path, size_bytes, bytes_written}.
- ``file.delete`` {path, recursive} -> {path, artifact_type}.
- ``tar.extract`` {dest} + input (a plain or gzip tar) -> {entry_count, bytes_written}.
- ``tar.create`` {path} -> {artifact_type, entry_count, bytes_written, skipped}; the tar as
  ``data`` output.
- ``tree.manifest`` {path, since} (+ input: the since document when since is true) ->
  {entry_count, truncated, hashed, started_ns, data_bytes}; lines
  {path, type, size, mtime_ns, sha256, link_target}.
- ``patch.apply`` {} + input (the patch) -> {entry_count, data_bytes}; lines
  {path, status, source}.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pyro_mcp.protocol.ops import ParamError, check_keys

WORKSPACE = "/workspace"
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
DEFAULT_READ_BYTES = 65536
MAX_READ_BYTES = 16 * 1024 * 1024
MAX_WRITE_BYTES = 256 * 1024 * 1024
MAX_LIST_ENTRIES = 10_000
MAX_MANIFEST_ENTRIES = 200_000
MAX_SINCE_BYTES = 64 * 1024 * 1024
MAX_ARCHIVE_BYTES = 8 * 1024**3
MAX_ARCHIVE_ENTRIES = 200_000
MAX_EXTRACT_BYTES = 16 * 1024**3
MAX_PATCH_BYTES = 16 * 1024 * 1024
MAX_PATCH_FILES = 10_000
MAX_TREE_DEPTH = 128

ARTIFACT_TYPES = ("file", "directory", "symlink", "other")
PATCH_STATUSES = ("added", "modified", "deleted", "renamed")

Parts = tuple[str, ...]


def workspace_parts(value: object, what: str = "path") -> Parts:
    """The components of a workspace path below /workspace; () is /workspace itself."""
    if not isinstance(value, str) or "\0" in value:
        raise ParamError(f"{what} must be a string without NUL")
    if len(value.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise ParamError(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    text = value
    if text.startswith("/"):
        if text != WORKSPACE and not text.startswith(WORKSPACE + "/"):
            raise ParamError(f"{what} {value!r:.200} is outside {WORKSPACE}")
        text = text[len(WORKSPACE) :]
    parts = tuple(part for part in text.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ParamError(f"{what} {value!r:.200} contains '..'; name it without '..'")
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise ParamError(f"a component of {what} is longer than {MAX_NAME_BYTES} bytes")
    return parts


def logical(parts: Parts) -> str:
    """The /workspace path that `parts` name (what results and messages show)."""
    return "/".join((WORKSPACE, *parts))


@dataclass(frozen=True)
class FileParams:
    """Validated parameters of one file operation (fields an op does not take keep defaults)."""

    parts: Parts = ()
    recursive: bool = False
    max_bytes: int = DEFAULT_READ_BYTES
    create_parents: bool = False
    since: bool = False


# op -> (the parameter naming its path, the other parameters it accepts)
_FILE_OPS: dict[str, tuple[str | None, frozenset[str]]] = {
    "file.list": ("path", frozenset({"recursive"})),
    "file.read": ("path", frozenset({"max_bytes"})),
    "file.write": ("path", frozenset({"create_parents"})),
    "file.delete": ("path", frozenset({"recursive"})),
    "tar.extract": ("dest", frozenset()),
    "tar.create": ("path", frozenset()),
    "tree.manifest": ("path", frozenset({"since"})),
    "patch.apply": (None, frozenset()),
}
# Where the workspace itself is a valid answer; a write or read needs a name inside it.
_ROOT_OK = frozenset({"file.list", "tar.extract", "tar.create", "tree.manifest"})


def _flag(params: dict[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise ParamError(f"{key} must be a boolean")
    return value


def parse_file_params(op: str, params: dict[str, Any]) -> FileParams:
    """Validate the parameters of file operation `op`; raise ParamError naming what is wrong."""
    path_key, others = _FILE_OPS[op]
    check_keys(params, others | ({path_key} if path_key else set()))
    parts: Parts = ()
    if path_key is not None:
        parts = workspace_parts(params.get(path_key, WORKSPACE), path_key)
        if not parts and op not in _ROOT_OK:
            raise ParamError(f"{op} needs a path inside {WORKSPACE}, not {WORKSPACE} itself")
    max_bytes = params.get("max_bytes", DEFAULT_READ_BYTES)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise ParamError("max_bytes must be an integer")
    if not 0 <= max_bytes <= MAX_READ_BYTES:
        raise ParamError(f"max_bytes must be within 0..{MAX_READ_BYTES}")
    return FileParams(
        parts=parts,
        recursive=_flag(params, "recursive"),
        max_bytes=max_bytes,
        create_parents=_flag(params, "create_parents"),
        since=_flag(params, "since"),
    )


def parse_since(data: bytes) -> dict[str, tuple[int, int]]:
    """The since document of tree.manifest: {relative path: [size, mtime_ns]}."""
    if len(data) > MAX_SINCE_BYTES:
        raise ParamError(f"the since document is larger than {MAX_SINCE_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ParamError("the since document is not valid JSON") from None
    if not isinstance(doc, dict) or len(doc) > MAX_MANIFEST_ENTRIES:
        raise ParamError(f"since must be an object of at most {MAX_MANIFEST_ENTRIES} paths")
    since: dict[str, tuple[int, int]] = {}
    for key, value in doc.items():
        if not (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise ParamError(f"since[{key!r:.100}] must be [size, mtime_ns]")
        since[key] = (value[0], value[1])
    return since


# --- patch headers --------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchFile:
    """One file a patch changes, as its headers name it (a/ and b/ prefixes stripped)."""

    parts: Parts
    status: str
    source: Parts | None = None


_HUNK = re.compile(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _unquote(text: str) -> tuple[str, str]:
    """Split a C-quoted name (as git writes unusual names) from what follows it."""
    out, i = bytearray(), 1
    while i < len(text) and text[i] != '"':
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            if re.fullmatch(r"[0-7]{3}", text[i + 1 : i + 4]):
                out.append(int(text[i + 1 : i + 4], 8) & 0xFF)
                i += 4
                continue
        out += ch.encode("utf-8", "surrogateescape")
        i += 1
    if i >= len(text):
        raise ParamError("a patch header has an unterminated quoted name")
    return out.decode("utf-8", "surrogateescape"), text[i + 1 :]


def _raw_name(text: str) -> str:
    if text.startswith('"'):
        return _unquote(text)[0]
    return text.split("\t", 1)[0].rstrip("\r")


def _strip(name: str | None, prefixed: bool) -> Parts | None:
    """A header name as workspace parts (None for /dev/null); refuses names leaving it."""
    if name is None or name == "/dev/null":
        return None
    if name.startswith("/"):
        raise ParamError(f"the patch names an absolute path {name!r:.200}")
    if prefixed and "/" in name:
        name = name.split("/", 1)[1]  # git apply's default -p1
    parts = workspace_parts(name, "a patched path")
    if not parts:
        raise ParamError("the patch names an empty path")
    return parts


def _git_names(rest: str) -> tuple[str | None, str | None]:
    """Both names of a ``diff --git`` line, when they can be told apart."""
    if rest.startswith('"'):
        first, tail = _unquote(rest)
        tail = tail.lstrip(" ")
        return first, _raw_name(tail) if tail else None
    # Unquoted names may hold spaces: git takes the split where both sides name one file.
    for at in [i for i, ch in enumerate(rest) if ch == " "]:
        left, right = rest[:at], rest[at + 1 :].rstrip("\r")
        if left.partition("/")[2] == right.partition("/")[2]:
            return left, right
    return None, None


class _Section:
    def __init__(self, git: bool) -> None:
        self.git = git
        self.names: dict[str, str | None] = {}
        self.flags: set[str] = set()

    def build(self) -> PatchFile:
        names, flags = self.names, self.flags
        for key in ("git_old", "git_new", "old", "new"):
            _strip(names.get(key), prefixed=True)  # every name the patch holds is checked
        for key in ("rename_from", "rename_to", "copy_from", "copy_to"):
            _strip(names.get(key), prefixed=False)
        old = _strip(names.get("old", names.get("git_old")), prefixed=True)
        new = _strip(names.get("new", names.get("git_new")), prefixed=True)
        if "rename_to" in names:
            target = _strip(names["rename_to"], prefixed=False)
            source = _strip(names.get("rename_from"), prefixed=False)
            if target is not None:
                return PatchFile(target, "renamed", source)
        if "copy_to" in names:
            target = _strip(names["copy_to"], prefixed=False)
            if target is not None:
                return PatchFile(target, "added", _strip(names.get("copy_from"), prefixed=False))
        if "new" in flags or (names.get("old") == "/dev/null" and new is not None):
            status, path = "added", new
        elif "deleted" in flags or (names.get("new") == "/dev/null" and old is not None):
            status, path = "deleted", old
        else:
            status, path = "modified", new or old
        if path is None:
            raise ParamError("a patch section does not say which file it changes")
        return PatchFile(path, status)


_EXTENDED = {
    "rename from ": "rename_from",
    "rename to ": "rename_to",
    "copy from ": "copy_from",
    "copy to ": "copy_to",
}


def _skip_hunk(lines: list[str], i: int) -> int:
    """Index of the first line after the hunk whose header is lines[i]."""
    match = _HUNK.match(lines[i])
    if match is None:
        raise ParamError(f"malformed hunk header {lines[i]!r:.100}")
    old = int(match.group(1)) if match.group(1) is not None else 1
    new = int(match.group(2)) if match.group(2) is not None else 1
    i += 1
    while (old > 0 or new > 0) and i < len(lines):
        mark = lines[i][:1]
        if mark in (" ", ""):
            old, new = old - 1, new - 1
        elif mark == "-":
            old -= 1
        elif mark == "+":
            new -= 1
        elif mark != "\\":
            break
        i += 1
    while i < len(lines) and lines[i].startswith("\\"):
        i += 1
    return i


def parse_patch(text: str) -> list[PatchFile]:
    """Every file a unified or git diff changes, in order; ParamError if one leaves the root."""
    lines = text.split("\n")
    sections: list[_Section] = []
    current: _Section | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            current = _Section(git=True)
            sections.append(current)
            old, new = _git_names(line[len("diff --git ") :])
            current.names.update({"git_old": old, "git_new": new})
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            if current is None or not current.git or "old" in current.names:
                current = _Section(git=False)
                sections.append(current)
            current.names["old"] = _raw_name(line[4:])
            current.names["new"] = _raw_name(lines[i + 1][4:])
            i += 2
            while i < len(lines) and lines[i].startswith("@@"):
                i = _skip_hunk(lines, i)
            continue
        elif current is not None and current.git:
            if line.startswith("new file mode"):
                current.flags.add("new")
            elif line.startswith("deleted file mode"):
                current.flags.add("deleted")
            for prefix, key in _EXTENDED.items():
                if line.startswith(prefix):
                    current.names[key] = _raw_name(line[len(prefix) :])
        i += 1
    if len(sections) > MAX_PATCH_FILES:
        raise ParamError(f"the patch changes more than {MAX_PATCH_FILES} files")
    return [section.build() for section in sections]
