"""The `pyro` entry point: version, usage errors, and the parser's command set."""

from __future__ import annotations

import pytest

from pyro_mcp import __version__
from pyro_mcp.cli.main import build_parser, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out, err = capsys.readouterr()
    assert out == f"pyro-mcp {__version__}\n"
    assert err == ""


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out, _ = capsys.readouterr()
    assert "usage: pyro" in out
    for command in ("env", "doctor", "runtime"):
        assert command in out


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["--no-such-flag"]])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage: pyro" in err


def test_every_env_subcommand_takes_json() -> None:
    parser = build_parser()
    for argv in (
        ["env", "list"],
        ["env", "inspect", "x"],
        ["env", "pull", "x"],
        ["env", "prune"],
        ["doctor"],
    ):
        assert parser.parse_args([*argv, "--json"]).json is True
        assert parser.parse_args(argv).json is False
