"""Install an official Firecracker release into the cache: download, verify, then publish."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pyro_mcp import paths
from pyro_mcp.errors import (
    DownloadError,
    HostRequirementError,
    IntegrityError,
    InvalidArgumentError,
)
from pyro_mcp.vmm.firecracker.locate import (
    BIN_ENV,
    DEFAULT_VERSION,
    default_install_root,
    is_executable,
)

DEFAULT_BASE_URL = "https://github.com/firecracker-microvm/firecracker/releases/download"
BASE_URL_ENV = "PYRO_FIRECRACKER_BASE_URL"
ARCHIVE_SHA256_ENV = "PYRO_FIRECRACKER_ARCHIVE_SHA256"

BINARIES = ("firecracker", "jailer")
MAX_MEMBER_BYTES = 64 * 1024 * 1024
# The official archive also carries debug symbols and helper tools; this only stops a runaway.
MAX_ARCHIVE_BYTES = 1024 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 256 * 1024
_MANIFEST = "install.json"
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MIRROR_HINT = (
    f"set {BASE_URL_ENV} to a reachable mirror, or put firecracker on PATH "
    f"or point {BIN_ENV} at an existing binary"
)

ProgressFn = Callable[[int, int | None], None]


@dataclass(frozen=True)
class PinnedBinary:
    """The digest an official release binary must have; the size is informative only."""

    sha256: str
    size: int | None = None


PINNED: dict[str, dict[str, PinnedBinary]] = {
    "1.12.1": {
        "firecracker": PinnedBinary(
            "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930", 2892072
        ),
        "jailer": PinnedBinary(
            "86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5", 2280632
        ),
    },
}


def install_firecracker(
    version: str = DEFAULT_VERSION,
    *,
    base_url: str | None = None,
    archive_sha256: str | None = None,
    binary_sha256: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
    dest_root: Path | None = None,
) -> dict[str, Any]:
    """Download, verify and atomically install an official Firecracker release (x86_64)."""
    _require_x86_64()
    if not _VERSION_RE.match(version):
        raise InvalidArgumentError(
            f"invalid Firecracker version {version!r}", hint="give it as X.Y.Z, e.g. 1.12.1"
        )
    expected = _expected_binaries(version, binary_sha256)
    archive_digest = archive_sha256 or os.environ.get(ARCHIVE_SHA256_ENV) or None
    if archive_digest is not None:
        archive_digest = _check_digest(archive_digest.strip().lower(), "archive sha256")
    root = dest_root if dest_root is not None else default_install_root()
    install_dir = root / version
    if _verifies(install_dir, expected):
        return _report(version, install_dir, expected, already_installed=True)
    url = release_url(version, base_url)
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            stage = _stage_release(work, url, version, expected, archive_digest, progress)
            raced = _publish(stage, install_dir, work, expected)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except OSError as exc:
        raise HostRequirementError(
            f"cannot write the Firecracker install under {root}: {exc}",
            hint=f"make that directory writable or set {paths.CACHE_ENV} elsewhere",
        ) from exc
    return _report(version, install_dir, expected, already_installed=raced)


def _stage_release(
    work: Path,
    url: str,
    version: str,
    expected: Mapping[str, PinnedBinary],
    archive_digest: str | None,
    progress: ProgressFn | None,
) -> Path:
    """Download and verify into `work`; return the staged directory ready to be renamed."""
    archive = work / "archive.tgz"
    actual_archive = _download(url, archive, progress)
    if archive_digest is not None and actual_archive != archive_digest:
        raise _mismatch(f"archive {url}", archive_digest, actual_archive)
    stage = work / "stage"
    stage.mkdir()
    _extract_binaries(archive, version, stage, expected)
    manifest = {"version": version, "source_url": url, "archive_sha256": actual_archive}
    manifest |= {f"{name}_sha256": expected[name].sha256 for name in BINARIES}
    (stage / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    os.chmod(stage, 0o755)  # mkdir's mode is filtered by the umask
    return stage


def release_url(version: str, base_url: str | None = None) -> str:
    """The URL of the official x86_64 release archive under `base_url` (or the env/default)."""
    base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise InvalidArgumentError(
            f"Firecracker base URL {base!r} is not http(s)",
            hint=f"pass an http:// or https:// URL (argument or {BASE_URL_ENV})",
        )
    return f"{base.rstrip('/')}/v{version}/firecracker-v{version}-x86_64.tgz"


def _require_x86_64() -> None:
    machine = platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        raise HostRequirementError(
            f"pyro installs Firecracker only for x86_64 hosts, this one is {machine or 'unknown'}",
            hint=f"install Firecracker for this machine yourself and set {BIN_ENV} to it",
            machine=machine,
        )


def _check_digest(value: str, what: str) -> str:
    if not _SHA256_RE.match(value):
        raise InvalidArgumentError(
            f"{what} {value!r} is not a sha256 hex digest", hint="give 64 hexadecimal characters"
        )
    return value


def _expected_binaries(
    version: str, binary_sha256: Mapping[str, str] | None
) -> dict[str, PinnedBinary]:
    if binary_sha256 is None:
        pinned = PINNED.get(version)
        if pinned is None:
            raise InvalidArgumentError(
                f"Firecracker {version} has no pinned digests, so it cannot be verified",
                hint=(
                    "pass binary_sha256={'firecracker': <sha256>, 'jailer': <sha256>} "
                    f"or install a pinned version ({', '.join(sorted(PINNED))})"
                ),
                version=version,
            )
        return pinned
    if set(binary_sha256) != set(BINARIES):
        raise InvalidArgumentError(
            f"binary_sha256 must have exactly the keys {', '.join(BINARIES)}",
            hint="give one sha256 for firecracker and one for jailer",
        )
    return {
        name: PinnedBinary(_check_digest(binary_sha256[name].strip().lower(), f"{name} sha256"))
        for name in BINARIES
    }


def _mismatch(what: str, expected: str, actual: str) -> IntegrityError:
    return IntegrityError(
        f"{what} has sha256 {actual}, expected {expected}; nothing was installed",
        hint="the download or the mirror is corrupt or tampered with; retry or use another mirror",
        expected=expected,
        actual=actual,
    )


def _download(url: str, dest: Path, progress: ProgressFn | None) -> str:
    """Stream `url` into `dest` and return its sha256; any failure is a DownloadError."""
    request = urllib.request.Request(url, headers={"User-Agent": "pyro-mcp"})
    try:
        with (
            urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response,
            dest.open("wb") as out,
        ):
            return _stream(response, out, url, progress)
    except urllib.error.HTTPError as exc:
        raise _download_error(url, f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _download_error(url, str(exc.reason)) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _download_error(url, str(exc) or type(exc).__name__) from exc


def _stream(response: Any, out: IO[bytes], url: str, progress: ProgressFn | None) -> str:
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    digest = hashlib.sha256()
    done = 0
    if progress is not None:
        progress(0, total)
    while chunk := response.read(_CHUNK):
        done += len(chunk)
        if done > MAX_ARCHIVE_BYTES:
            raise _download_error(url, f"archive exceeds {MAX_ARCHIVE_BYTES} bytes")
        digest.update(chunk)
        out.write(chunk)
        if progress is not None:
            progress(done, total)
    if total is not None and done != total:
        raise _download_error(url, f"connection closed after {done} of {total} bytes")
    return digest.hexdigest()


def _download_error(url: str, reason: str) -> DownloadError:
    return DownloadError(f"cannot download {url}: {reason}", hint=_MIRROR_HINT, url=url)


def _extract_binaries(
    archive: Path, version: str, stage: Path, expected: Mapping[str, PinnedBinary]
) -> None:
    """Copy just the two release binaries out of `archive` into `stage`, verifying each."""
    wanted = {f"release-v{version}-x86_64/{name}-v{version}-x86_64": name for name in BINARIES}
    found: dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = _member_name(member)
                if name in wanted:
                    if name in found:
                        raise _bad_archive(f"{name} appears more than once")
                    found[name] = member
            for name, binary in wanted.items():
                if name not in found:
                    raise _bad_archive(f"it has no {name}")
                _copy_member(tar, found[name], stage / binary, expected[binary])
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _bad_archive(f"it cannot be read ({exc})") from exc


def _member_name(member: tarfile.TarInfo) -> str:
    pure = PurePosixPath(member.name)
    if pure.is_absolute() or ".." in pure.parts:
        raise _bad_archive(f"member {member.name!r} points outside the archive")
    return member.name.removeprefix("./")


def _copy_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, expected: PinnedBinary
) -> None:
    if not member.isreg():
        raise _bad_archive(f"{member.name} is not a regular file")
    if member.size > MAX_MEMBER_BYTES:
        raise _bad_archive(f"{member.name} is {member.size} bytes, over {MAX_MEMBER_BYTES}")
    source = tar.extractfile(member)
    if source is None:
        raise _bad_archive(f"{member.name} has no content")
    digest = hashlib.sha256()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with source, os.fdopen(os.open(dest, flags, 0o755), "wb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    os.chmod(dest, 0o755)
    actual = digest.hexdigest()
    if actual != expected.sha256:
        raise _mismatch(member.name, expected.sha256, actual)


def _bad_archive(reason: str) -> IntegrityError:
    return IntegrityError(
        f"refusing the Firecracker archive: {reason}; nothing was installed",
        hint="the download or the mirror is not an official release archive; use another mirror",
    )


def _publish(
    stage: Path, install_dir: Path, work: Path, expected: Mapping[str, PinnedBinary]
) -> bool:
    """Move `stage` into place; True when a concurrent installer got there first."""
    if install_dir.exists() or install_dir.is_symlink():
        # A broken earlier install is moved into the work dir, which is removed afterwards.
        os.rename(install_dir, work / "replaced")
    try:
        os.rename(stage, install_dir)
    except OSError:
        if _verifies(install_dir, expected):
            return True
        raise
    return False


def _verifies(install_dir: Path, expected: Mapping[str, PinnedBinary]) -> bool:
    if install_dir.is_symlink() or not install_dir.is_dir():
        return False
    for name in BINARIES:
        path = install_dir / name
        if path.is_symlink() or not is_executable(path):
            return False
        with path.open("rb") as handle:
            if hashlib.file_digest(handle, "sha256").hexdigest() != expected[name].sha256:
                return False
    return True


def _report(
    version: str,
    install_dir: Path,
    expected: Mapping[str, PinnedBinary],
    *,
    already_installed: bool,
) -> dict[str, Any]:
    try:
        loaded = json.loads((install_dir / _MANIFEST).read_text())
    except (OSError, ValueError):
        loaded = None  # the manifest is informative only; the binaries were verified already
    manifest: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    return {
        "version": version,
        "firecracker_bin": str(install_dir / "firecracker"),
        "jailer_bin": str(install_dir / "jailer"),
        "source_url": manifest.get("source_url"),
        "archive_sha256": manifest.get("archive_sha256"),
        "firecracker_sha256": expected["firecracker"].sha256,
        "jailer_sha256": expected["jailer"].sha256,
        "already_installed": already_installed,
        "install_dir": str(install_dir),
    }
