"""Host tools: lookup (also in sbin), and one error naming every missing tool and its package."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from pyro_mcp.errors import HostRequirementError
from pyro_mcp.host import tools
from pyro_mcp.host.tools import Tool


def fake_which(monkeypatch: pytest.MonkeyPatch, found: dict[tuple[str, str | None], str]) -> None:
    def which(command: str, mode: int = 0, path: str | None = None) -> str | None:
        return found.get((command, path))

    monkeypatch.setattr(tools.shutil, "which", which)


def test_path_looks_in_path_then_sbin(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_which(
        monkeypatch,
        {("mke2fs", "/usr/sbin:/sbin"): "/usr/sbin/mke2fs", ("lz4", None): "/usr/bin/lz4"},
    )
    assert Tool("mke2fs", "e2fsprogs", "x").path() == "/usr/sbin/mke2fs"
    assert Tool("lz4", "lz4", "x").path() == "/usr/bin/lz4"
    assert Tool("nothing", "nothing", "x").path() is None


def test_install_hint_names_the_package() -> None:
    assert Tool("mke2fs", "e2fsprogs", "x").install_hint == "apt-get install -y e2fsprogs"
    assert tools.QEMU.install_hint == "apt-get install -y qemu-system-x86"


def test_require_returns_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_which(monkeypatch, {("a", None): "/bin/a", ("b", None): "/bin/b"})
    assert tools.require(Tool("a", "pa", "x"), Tool("b", "pb", "y")) == {
        "a": "/bin/a",
        "b": "/bin/b",
    }


def test_require_names_every_missing_tool_and_one_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_which(monkeypatch, {("mke2fs", None): "/sbin/mke2fs"})
    with pytest.raises(HostRequirementError) as caught:
        tools.require(*tools.IMAGE_BUILD_TOOLS)
    error = caught.value
    text = str(error)
    assert "`mmdebstrap` (builds environments from Debian packages)" in text
    assert "`lz4`" in text
    assert "mke2fs" not in text
    assert "apt-get install -y lz4 mmdebstrap" in text
    assert error.details == {"missing": ["mmdebstrap", "lz4"]}
    assert error.to_dict()["type"] == "host_requirement"


def test_the_real_lookup_finds_sh() -> None:
    assert Tool("sh", "dash", "x").path() == shutil.which("sh")


def test_tool_tables_name_their_packages() -> None:
    table: dict[str, Any] = {
        t.command: t.package for t in (*tools.IMAGE_BUILD_TOOLS, tools.NFT, tools.QEMU)
    }
    assert table == {
        "mmdebstrap": "mmdebstrap",
        "mke2fs": "e2fsprogs",
        "lz4": "lz4",
        "nft": "nftables",
        "qemu-system-x86_64": "qemu-system-x86",
    }
