"""Parameter rules of the shell operations, which the host and the guest both apply."""

from __future__ import annotations

from typing import Any

import pytest

from pyro_mcp.protocol import shell_ops as so
from pyro_mcp.protocol.ops import ParamError

SID = "0123456789ab"


def test_open_defaults_and_cwd_rules() -> None:
    assert so.parse_open({}) == so.OpenSpec((), 120, 30)
    assert so.parse_open({"cwd": "/workspace/a/./b", "cols": 1, "rows": 1000}).parts == ("a", "b")
    assert so.parse_open({"cwd": "a//b"}).parts == ("a", "b")
    for cwd in ("/etc", "../x", "a/../../x", "/workspace/../etc", "/workspacex", 7, "a\0b"):
        with pytest.raises(ParamError, match="cwd"):
            so.parse_open({"cwd": cwd})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cols": 0}, "cols must be an integer between 1 and 1000"),
        ({"rows": 1001}, "rows must be"),
        ({"cols": True}, "cols must be"),
        ({"cols": 80.0}, "cols must be"),
        ({"shell": "bash"}, "unknown parameter"),
    ],
)
def test_open_refuses(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamError, match=message):
        so.parse_open(params)


def test_read_defaults_and_bounds() -> None:
    assert so.parse_read({"shell_id": SID}) == so.ReadSpec(SID, 0, 65536, None)
    top = so.parse_read(
        {"shell_id": SID, "cursor": 5, "max_chars": so.MAX_READ_CHARS, "wait_for_idle_ms": 10_000}
    )
    assert top == so.ReadSpec(SID, 5, so.MAX_READ_CHARS, 10_000)
    assert so.parse_read({"shell_id": SID, "wait_for_idle_ms": None}).wait_for_idle_ms is None
    bad: list[dict[str, Any]] = [
        {"cursor": -1},
        {"max_chars": 0},
        {"max_chars": so.MAX_READ_CHARS + 1},
        {"wait_for_idle_ms": 0},
        {"wait_for_idle_ms": 10_001},
        {"wait_for_idle_ms": 1.5},
        {"plain": True},  # rendering is the host's business
    ]
    for extra in bad:
        with pytest.raises(ParamError):
            so.parse_read({"shell_id": SID, **extra})


@pytest.mark.parametrize("shell_id", [None, "", "0123456789AB", "0123456789a", "0123456789abc", 12])
def test_shell_ids_are_twelve_lowercase_hex_digits(shell_id: Any) -> None:
    assert not so.valid_shell_id(shell_id)
    for parse in (so.parse_read, so.parse_shell_id):
        with pytest.raises(ParamError, match="shell_id must be 12 lowercase hex digits"):
            parse({"shell_id": shell_id})


def test_write_input_rules() -> None:
    spec = so.parse_write({"shell_id": SID, "input": "ls -l"})
    assert spec == so.WriteSpec(SID, "ls -l", True)
    assert not so.parse_write(
        {"shell_id": SID, "input": "", "append_newline": False}
    ).append_newline
    # Plain text up to the limit fits; control characters count six bytes each in the header.
    so.parse_write({"shell_id": SID, "input": "x" * (so.MAX_INPUT_JSON_BYTES - 2)})
    for text in ("x" * so.MAX_INPUT_JSON_BYTES, "\x03" * (so.MAX_INPUT_JSON_BYTES // 5)):
        with pytest.raises(ParamError, match="split it into several writes"):
            so.parse_write({"shell_id": SID, "input": text})
    with pytest.raises(ParamError, match="lone surrogate"):
        so.parse_write({"shell_id": SID, "input": "\udc80"})
    with pytest.raises(ParamError, match="input must be a string"):
        so.parse_write({"shell_id": SID, "input": b"ls"})
    with pytest.raises(ParamError, match="append_newline must be a boolean"):
        so.parse_write({"shell_id": SID, "input": "ls", "append_newline": 1})


def test_signal_and_resize() -> None:
    assert so.parse_signal({"shell_id": SID}) == (SID, "INT")
    for name in so.SIGNALS:
        assert so.parse_signal({"shell_id": SID, "signal": name}) == (SID, name)
    for wrong in ("SIGINT", "int", "STOP", 2):
        with pytest.raises(ParamError, match="HUP, INT, TERM, KILL"):
            so.parse_signal({"shell_id": SID, "signal": wrong})
    assert so.parse_resize({"shell_id": SID, "cols": 80, "rows": 24}) == (SID, 80, 24)
    with pytest.raises(ParamError, match="needs rows"):
        so.parse_resize({"shell_id": SID, "cols": 80})
    with pytest.raises(ParamError, match="unknown parameter"):
        so.parse_shell_id({"shell_id": SID, "force": True})
