"""The doctor's networking check: it tries everything for real in a namespace of its own, so the
namespace it runs in keeps its ruleset, links and forwarding; each problem names its fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from framework.sandbox_netns import (
    forwarding_here,
    links_here,
    needs_namespaces,
    ruleset_here,
    run_python,
    set_forwarding_here,
)
from pyro_mcp.host import tools
from pyro_mcp.network import check

NFT_MISSING = "`nft` is missing (filters and NATs guest traffic): apt-get install -y nftables"


def hide_nft(monkeypatch: pytest.MonkeyPatch, replacement: str | None = None) -> None:
    real_which = tools.shutil.which

    def which(command: str, *args: Any, **kwargs: Any) -> str | None:
        return replacement if command == "nft" else real_which(command, *args, **kwargs)

    monkeypatch.setattr(tools.shutil, "which", which)


@needs_namespaces(nft=True)
def test_this_host_passes_and_keeps_its_own_namespace_as_it_was(
    home_namespace_unchanged: None,
) -> None:
    # home_namespace_unchanged compares this namespace's ruleset and forwarding afterwards.
    forwarding = forwarding_here()
    assert check.check() == {
        "ok": True,
        "problems": [],
        "nft_binary": tools.NFT.path(),
        "tun_available": True,
        "host_ip_forward": forwarding == "1",
    }


@needs_namespaces(nft=True)
def test_the_check_reports_forwarding_and_changes_nothing_where_it_runs(
    netns_sandbox: int,
) -> None:
    # In a namespace of the test's own, forwarding can be set either way and looked at closely.
    for forwarding in ("0", "1"):
        set_forwarding_here(forwarding)
        report = check.check()
        assert (report["ok"], report["problems"]) == (True, [])
        assert report["host_ip_forward"] is (forwarding == "1")
        assert forwarding_here() == forwarding
        assert ruleset_here() == []
        assert list(links_here()) == ["lo"]


def test_a_missing_nft_is_reported_with_its_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_nft(monkeypatch)
    report = check.check()
    assert report["ok"] is False and report["nft_binary"] is None
    assert NFT_MISSING in report["problems"]


@needs_namespaces()
def test_an_nft_that_fails_in_the_namespace_is_reported_with_its_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, home_namespace_unchanged: None
) -> None:
    # An nft whose kernel side is missing: the check gets that far only by making a namespace
    # and a TAP for real first.
    fake = tmp_path / "nft"
    fake.write_text("#!/bin/sh\necho 'Error: Could not process rule: Operation not supported' >&2\n"
                    "exit 1\n")  # fmt: skip
    fake.chmod(0o755)
    hide_nft(monkeypatch, str(fake))
    report = check.check()
    assert (report["ok"], report["nft_binary"]) == (False, str(fake))
    [problem] = report["problems"]
    assert problem.startswith("nftables refused pyro's rules: Error: Could not process rule")
    assert "pyro doctor" in problem


@needs_namespaces()
def test_without_root_the_check_says_guest_networking_needs_root() -> None:
    # A child that drops root once everything is imported: the namespace it asks for is then
    # refused by the kernel itself.
    script = (
        "import json, os, pyroute2\n"
        "from pyro_mcp.network import check\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "print(json.dumps(check.check()))\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    [problem] = report["problems"]
    assert problem.startswith("cannot create a network namespace: ")
    assert "needs root" in problem
