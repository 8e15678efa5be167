"""The Debian side of a build: the package source, mmdebstrap's arguments and its failures."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.environments import debian
from pyro_mcp.errors import BuildError, HostRequirementError


def test_mirror_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(debian, "_HOST_SOURCES", (tmp_path / "absent",))
    monkeypatch.setenv("PYRO_DEBIAN_MIRROR", "http://mirror.invalid/debian")
    assert debian.mirror() == "http://mirror.invalid/debian"


def test_mirror_uses_the_first_host_source_naming_bookworm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trixie = tmp_path / "trixie.sources"
    trixie.write_text("Types: deb\nURIs: http://deb.example/debian\nSuites: trixie\n")
    bookworm = tmp_path / "debian.sources"
    bookworm.write_text("Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm\n")
    missing = tmp_path / "missing.list"
    monkeypatch.setattr(debian, "_HOST_SOURCES", (missing, trixie, bookworm))
    assert debian.mirror() == str(bookworm)


def test_mirror_without_any_bookworm_source_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "sources.list"
    other.write_text("deb http://deb.example/debian trixie main\n")
    monkeypatch.setattr(debian, "_HOST_SOURCES", (tmp_path / "absent", other))
    with pytest.raises(HostRequirementError) as caught:
        debian.mirror()
    text = str(caught.value)
    assert "bookworm" in text
    assert "PYRO_DEBIAN_MIRROR" in text


def test_an_unreadable_source_is_skipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "a-directory"  # read_text raises IsADirectoryError
    folder.mkdir()
    good = tmp_path / "good.list"
    good.write_text("deb http://deb.example/debian bookworm main\n")
    monkeypatch.setattr(debian, "_HOST_SOURCES", (folder, good))
    assert debian.mirror() == str(good)


def test_building_as_non_root_is_refused_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    with pytest.raises(HostRequirementError) as caught:
        debian._base_args("minbase", ["git"])
    assert "root" in str(caught.value)
    assert "sudo" in str(caught.value)


class Recorder:
    def __init__(self, returncode: int = 0, output: bytes = b"") -> None:
        self.calls: list[list[str]] = []
        self.returncode, self.output = returncode, output

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(args)
        kwargs["stdout"].write(self.output)
        return subprocess.CompletedProcess(args, self.returncode)


def test_root_tree_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(debian.os, "geteuid", lambda: 0)
    monkeypatch.setenv("PYRO_DEBIAN_MIRROR", "http://mirror.invalid/debian")
    recorder = Recorder()
    monkeypatch.setattr(debian.subprocess, "run", recorder)
    debian.build_root_tree(tmp_path / "root", ["python3", "git"], tmp_path / "rootfs.log")
    (args,) = recorder.calls
    assert args[:4] == ["mmdebstrap", "--quiet", "--mode=root", "--variant=minbase"]
    assert "--include=python3,git" in args
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in args
    assert any(a.startswith("--customize-hook=") and "/opt/pyro" in a for a in args)
    assert args[-3:] == ["bookworm", str(tmp_path / "root"), "http://mirror.invalid/debian"]


def test_kernel_tree_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(debian.os, "geteuid", lambda: 0)
    monkeypatch.setenv("PYRO_DEBIAN_MIRROR", "http://mirror.invalid/debian")
    recorder = Recorder()
    monkeypatch.setattr(debian.subprocess, "run", recorder)
    debian.fetch_kernel_tree(tmp_path / "kernel", tmp_path / "kernel.log")
    (args,) = recorder.calls
    assert "--variant=extract" in args
    assert "--include=linux-image-cloud-amd64,busybox-static" in args


def test_a_failed_mmdebstrap_reports_the_log_tail(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(debian.os, "geteuid", lambda: 0)
    monkeypatch.setenv("PYRO_DEBIAN_MIRROR", "http://mirror.invalid/debian")
    lines = b"".join(b"line %d\n" % n for n in range(30)) + b"E: Unable to locate package nope\n"
    monkeypatch.setattr(debian.subprocess, "run", Recorder(returncode=25, output=lines))
    log = tmp_path / "rootfs.log"
    with pytest.raises(BuildError) as caught:
        debian.build_root_tree(tmp_path / "root", ["nope"], log)
    text = str(caught.value)
    assert "exit 25" in text
    assert "E: Unable to locate package nope" in text
    assert "line 29" in text and "line 5\n" not in text
    assert str(log) in text


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="dpkg-query missing (not Debian)")
def test_installed_packages_reads_the_tree_dpkg_database(tmp_path: Path) -> None:
    admin = tmp_path / "var" / "lib" / "dpkg"
    admin.mkdir(parents=True)
    (admin / "status").write_text(
        "Package: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13\nArchitecture: amd64\n\n"
        "Package: git\nStatus: install ok installed\nVersion: 1:2.39.5\nArchitecture: amd64\n\n"
    )
    (admin / "available").write_text("")
    (admin / "updates").mkdir()
    (admin / "info").mkdir()
    assert debian.installed_packages(tmp_path) == ["git=1:2.39.5", "zlib1g=1:1.2.13"]
