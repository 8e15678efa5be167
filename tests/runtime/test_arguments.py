"""The bounds on resources and times, and the two forms of a command."""

from __future__ import annotations

from typing import Any

import pytest

from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.runtime.arguments import LIMITS, check_range, command_parts

# --- check_range ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_check_range_accepts_both_ends(name: str) -> None:
    low, high = LIMITS[name]
    assert check_range(name, low) == low
    assert check_range(name, high) == high


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("vcpu_count", 0),
        ("vcpu_count", 9),
        ("mem_mib", 100),
        ("mem_mib", 40000),
        ("ttl_seconds", 10),
        ("ttl_seconds", 86401),
        ("timeout_seconds", 0),
        ("timeout_seconds", -1),
        ("vcpu_count", True),  # a bool is not a count
        ("vcpu_count", "2"),
        ("mem_mib", None),
        ("timeout_seconds", float("nan")),
    ],
)
def test_check_range_names_the_field_and_its_range(name: str, value: Any) -> None:
    low, high = LIMITS[name]
    with pytest.raises(InvalidArgumentError) as caught:
        check_range(name, value)
    assert f"{name} must be between {low} and {high}" in str(caught.value)
    assert caught.value.hint is not None and name in caught.value.hint


# --- commands ------------------------------------------------------------------------------


def test_a_string_command_is_shell_text() -> None:
    assert command_parts("echo hi && exit 3") == (None, "echo hi && exit 3", "echo hi && exit 3")


def test_an_argv_command_is_kept_exactly_and_shown_quoted() -> None:
    argv = ["sh", "-c", 'printf "%s|" "$@"', "x", "a b", "it's", '"q"', ""]
    got_argv, shell, text = command_parts(tuple(argv))
    assert got_argv == argv and shell is None
    assert text == "sh -c 'printf \"%s|\" \"$@\"' x 'a b' 'it'\"'\"'s' '\"q\"' ''"


@pytest.mark.parametrize("command", ["", "   \n", [], ["ls", 3], [None]])
def test_empty_or_non_string_commands_are_refused(command: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="command"):
        command_parts(command)
