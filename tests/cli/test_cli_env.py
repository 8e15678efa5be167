"""`pyro env list | inspect | pull | prune` in-process: output shapes, errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.cli.main import main
from pyro_mcp.environments import catalog
from pyro_mcp.environments.service import EnvironmentService
from pyro_mcp.host import tools

VALID = "debian:12, debian:12-base, debian:12-build"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_env_list_json_shape(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "env", "list", "--json")
    assert code == 0
    assert err == ""
    payload = json.loads(out)
    assert set(payload) == {"catalog_version", "environments"}
    assert payload["catalog_version"] == catalog.CATALOG_VERSION
    envs = payload["environments"]
    assert [e["name"] for e in envs] == catalog.names()
    for env in envs:
        assert env["installed"] is False
        assert env["cache_dir"] == str(tmp_path / "pyro-cache" / "environments")
        assert {
            "version",
            "description",
            "default_packages",
            "source_digest",
            "install_dir",
        } <= set(env)


def test_env_list_human(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "env", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"Catalog version: {catalog.CATALOG_VERSION}"
    assert lines[1].split() == ["debian:12", "[not", "installed]", "Debian", "12", "with", "Git"]
    assert len(lines) == 1 + len(catalog.CATALOG)


def test_env_inspect_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "env", "inspect", "debian:12-base", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["name"] == "debian:12-base"
    assert info["installed"] is False
    assert "install_manifest" not in info


def test_env_inspect_human(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "env", "inspect", "debian:12-build")
    assert code == 0
    assert "Environment: debian:12-build" in out
    assert "Installed: no" in out
    assert "Default packages: bash, coreutils, git, gcc, make, cmake, python3" in out


def test_env_inspect_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "env", "inspect", "nope")
    assert code == 1
    assert out == ""
    assert err.startswith("[error] unknown environment 'nope'")
    assert VALID in err
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_env_inspect_unknown_name_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "env", "inspect", "nope", "--json")
    assert code == 1
    assert err == ""
    payload = json.loads(out)
    assert payload["ok"] is False
    assert payload["error"]["type"] == "not_found"
    assert payload["error"]["message"].startswith("unknown environment 'nope'")
    assert VALID in payload["error"]["message"]


def test_env_pull_unknown_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "env", "pull", "ubuntu:24.04")
    assert code == 1
    assert err.startswith("[error] unknown environment 'ubuntu:24.04'")
    assert VALID in err
    assert not (tmp_path / "pyro-cache").exists()  # rejected before touching the cache


def test_env_pull_names_a_missing_host_tool(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_which = tools.shutil.which

    def which(command: str, *args: Any, **kwargs: Any) -> str | None:
        return None if command == "mmdebstrap" else real_which(command, *args, **kwargs)

    monkeypatch.setattr(tools.shutil, "which", which)
    code, out, err = run(capsys, "env", "pull", "debian:12")
    assert code == 1
    assert "`mmdebstrap`" in err
    assert "apt-get install -y mmdebstrap" in err
    assert "Traceback" not in err

    code, out, err = run(capsys, "env", "pull", "debian:12", "--json")
    assert code == 1
    error = json.loads(out)["error"]
    assert error["type"] == "host_requirement"
    assert error["details"]["missing"] == ["mmdebstrap"]


def fake_pull(service: EnvironmentService, name: str, progress: Any = None) -> dict[str, Any]:
    env = catalog.get(name)
    if progress is not None:
        progress.phase("rootfs", "installing python3, ca-certificates, git")
        progress.phase("install", f"recording {name}")
    manifest = {
        "kernel_version": "6.1.0-test",
        "built_at": "2026-01-01T00:00:00Z",
        "artifacts": {
            n: {"sha256": c * 64, "size": 3 << 20, "file": n}
            for n, c in (("kernel", "a"), ("initramfs", "b"), ("rootfs", "c"))
        },
    }
    info = service.info(env)
    blobs = service.store.blobs
    info.update(
        installed=True,
        install_manifest=manifest,
        built=True,
        duration_ms=1500,
        kernel_image=str(blobs.path("a" * 64)),
        initramfs_image=str(blobs.path("b" * 64)),
        rootfs_image=str(blobs.path("c" * 64)),
    )
    return info


def test_env_pull_human_reports_phases_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EnvironmentService, "pull", fake_pull)
    code, out, err = run(capsys, "env", "pull", "debian:12")
    assert code == 0
    assert err.splitlines() == [
        "[pull] phase=rootfs installing python3, ca-certificates, git",
        "[pull] phase=install recording debian:12",
    ]
    assert out.startswith("Built in 1.5 s\nPulled: debian:12\n")
    assert "Kernel: 6.1.0-test" in out
    assert "sha256:" + "c" * 64 in out


def test_env_pull_json_prints_only_the_result(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EnvironmentService, "pull", fake_pull)
    code, out, err = run(capsys, "env", "pull", "debian:12", "--json")
    assert code == 0
    assert err == ""
    result = json.loads(out)
    assert {"install_dir", "kernel_image", "rootfs_image", "source", "built"} <= set(result)


def test_env_prune_on_an_empty_cache(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "env", "prune", "--json")
    assert code == 0
    expected = {"deleted_environment_dirs": [], "count": 0, "deleted_blobs": []}
    assert json.loads(out) == {**expected, "deleted_snapshots": []}
    code, out, _ = run(capsys, "env", "prune")
    assert code == 0
    assert out == "Deleted 0 cached environment entries.\n"


def test_env_prune_human_lists_what_went(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    stale = tmp_path / "pyro-cache" / "environments" / "installed" / "debian_11-1.0.0"
    stale.mkdir(parents=True)
    code, out, _ = run(capsys, "env", "prune")
    assert code == 0
    assert out.splitlines() == ["Deleted 1 cached environment entries.", f"- {stale}"]
    assert not stale.exists()


def test_a_host_error_is_an_error_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_text("")
    monkeypatch.setenv("PYRO_CACHE_DIR", str(blocker / "cache"))
    code, out, err = run(capsys, "env", "prune")
    assert code == 1
    assert err.startswith("[error] host error:")
    code, out, err = run(capsys, "env", "prune", "--json")
    assert code == 1
    assert json.loads(out)["ok"] is False


@pytest.mark.parametrize(
    "argv",
    [
        ["env"],
        ["env", "frobnicate"],
        ["env", "inspect"],
        ["env", "list", "--bogus"],
        ["env", "pull", "debian:12", "debian:12-base"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "usage:" in err
