"""`pyro run`'s parsing: the command after `--`, and options that fail before any VM starts."""

from __future__ import annotations

import pytest

from pyro_mcp.cli import main as cli_main
from pyro_mcp.cli.run import as_command, split_command


def test_split_command_cuts_at_the_first_double_dash_only() -> None:
    assert split_command(["run", "debian:12"]) == (["run", "debian:12"], None)
    assert split_command(["run", "e", "--json", "--", "sh", "--", "-c"]) == (
        ["run", "e", "--json"],
        ["sh", "--", "-c"],
    )
    assert split_command(["run", "e", "--"]) == (["run", "e"], [])


def test_as_command_treats_one_word_with_spaces_as_a_shell_line() -> None:
    assert as_command(["echo hi | wc -c"]) == "echo hi | wc -c"
    assert as_command(["true"]) == ["true"]
    assert as_command(["echo", "a b"]) == ["echo", "a b"]
    assert as_command(["tab\there"]) == "tab\there"


def test_run_options_go_before_or_after_the_environment() -> None:
    parser = cli_main.build_parser()
    for words in (
        ["run", "--timeout-seconds", "5", "--json", "debian:12"],
        ["run", "debian:12", "--timeout-seconds", "5", "--json"],
        ["run", "--json", "debian:12", "--timeout-seconds", "5"],
    ):
        args = parser.parse_args(words)
        assert (args.environment, args.timeout_seconds, args.json) == ("debian:12", 5, True)


def test_run_without_a_command_says_where_it_goes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["run", "debian:12"]) == 1
    err = capsys.readouterr().err
    assert "no command given" in err and "--" in err


def test_a_command_after_double_dash_only_goes_with_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main.main(["doctor", "--", "true"]) == 2
    assert "only goes with `pyro run`" in capsys.readouterr().err


def test_run_rejects_out_of_range_options_before_any_vm(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main.main(["run", "debian:12", "--vcpu-count", "9", "--", "true"]) == 1
    assert "vcpu_count must be between 1 and 8" in capsys.readouterr().err
    assert cli_main.main(["run", "nosuch:1", "--json", "--", "true"]) == 1
    out = capsys.readouterr().out
    assert '"not_found"' in out and "nosuch:1" in out
