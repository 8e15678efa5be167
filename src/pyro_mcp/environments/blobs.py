"""Content-addressed artefact store: every file is named by its sha256 and verified before use.

A verified blob gets a stamp of its inode, size, mtime and ctime. Any later write to the file
changes its ctime, which no caller can set back, so a matching stamp proves the bytes are the
ones that were hashed and the full hash need not be recomputed on every VM start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from pyro_mcp.errors import IntegrityError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sparse_sha256(path: Path) -> str:
    """sha256 over the file's size and its data extents (offset + bytes), skipping holes.

    Guest RAM and disk images are mostly holes: this reads only what is allocated, so an
    8 GiB disk with 4 MB written hashes in milliseconds. Equal files hash equal.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        digest.update(b"size:%d\n" % size)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            digest.update(b"extent:%d:%d\n" % (start, end))
            handle.seek(start)
            left = end - start
            while left > 0 and (chunk := handle.read(min(_CHUNK, left))):
                digest.update(chunk)
                left -= len(chunk)
            offset = end
    return digest.hexdigest()


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class BlobStore:
    """Immutable files under `root/sha256/<hex>`, added by atomic rename."""

    def __init__(self, root: Path, digest: Callable[[Path], str] = sha256_file) -> None:
        self.root = root
        self.dir = root / "sha256"
        self._digest = digest

    def path(self, digest: str) -> Path:
        return self.dir / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def add(self, source: Path) -> tuple[str, int]:
        """Move `source` (on the same file system) into the store; returns (sha256, size)."""
        digest = self._digest(source)
        size = source.stat().st_size
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.path(digest)
        os.chmod(source, 0o444)
        if target.exists() and self._verified(target, digest):
            source.unlink()
        else:
            os.replace(source, target)
            self._write_stamp(target, digest)
        return digest, size

    def verify(self, digest: str) -> Path:
        """The blob's path once its bytes are proven to hash to `digest`."""
        target = self.path(digest)
        if not target.is_file():
            raise IntegrityError(
                f"cached artefact sha256:{digest[:12]} is missing",
                hint="run `pyro env pull ENVIRONMENT` again to rebuild it",
                digest=digest,
            )
        if self._verified(target, digest):
            return target
        actual = self._digest(target)
        if actual != digest:
            raise IntegrityError(
                f"cached artefact {target} is corrupt: sha256 is {actual}, manifest says {digest}",
                hint="run `pyro env pull ENVIRONMENT` to rebuild it (the corrupt file is replaced)",
                digest=digest,
                actual=actual,
            )
        self._write_stamp(target, digest)
        return target

    def discard(self, digest: str) -> None:
        for path in (self.path(digest), self._stamp_path(digest)):
            path.unlink(missing_ok=True)

    def digests(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return [p.name for p in self.dir.iterdir() if len(p.name) == 64 and p.is_file()]

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def _stamp_path(self, digest: str) -> Path:
        return self.root / "stamps" / digest

    def _verified(self, target: Path, digest: str) -> bool:
        try:
            recorded = json.loads(self._stamp_path(digest).read_text())
        except (OSError, ValueError):
            return False
        return bool(recorded == _stamp(target))

    def _write_stamp(self, target: Path, digest: str) -> None:
        stamp = self._stamp_path(digest)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(json.dumps(_stamp(target)))
        os.replace(tmp, stamp)


def remove_tree(path: Path) -> None:
    """Delete a staging or install directory, read-only files included."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
