"""The `pyro` entry point: version, usage errors, and the parser's command set."""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys

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


def parse_outcome(
    parser: argparse.ArgumentParser, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[object, str, str]:
    try:
        outcome: object = vars(parser.parse_args(argv))
    except SystemExit as exc:
        outcome = exc.code
    out, err = capsys.readouterr()
    return outcome, out, err


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],
        ["run", "--help"],
        ["run", "debian:12", "--vcpu-count", "x"],
        ["demo", "--help"],
        ["env", "pull"],
        ["env", "bogus"],
        ["workspace", "--help"],
        ["workspace", "exec", "--help"],
        ["workspace", "file", "list", "ws", "--recursive", "/workspace/a"],
        ["mcp", "serve", "--profile", "nope"],
        ["doctor", "--no-probe"],
        ["runtime", "install", "qemu"],
    ],
    ids=" ".join,
)
def test_a_commands_own_parser_parses_and_prints_like_the_whole_one(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    whole = parse_outcome(build_parser(), argv, capsys)
    assert parse_outcome(build_parser(argv[0]), argv, capsys) == whole
    assert whole[0] in (0, 2) or isinstance(whole[0], dict)


def test_only_the_program_freezes_its_objects_at_the_end() -> None:
    frozen = gc.get_freeze_count()
    assert main(["--version"]) == 0
    assert gc.get_freeze_count() == frozen  # a caller's objects stay collectable
    probe = (
        "import gc\nfrom pyro_mcp.cli.main import main\n"
        "before = gc.get_freeze_count()\nmain()\nprint(gc.get_freeze_count() - before)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, "--version"], capture_output=True, text=True, check=True
    )
    version, newly_frozen = done.stdout.split()[-2:]
    assert version == __version__ and int(newly_frozen) > 0
