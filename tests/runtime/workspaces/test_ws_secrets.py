"""Workspace secrets on the host: parsing, checks, private storage, views, removal (no VM)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyro_mcp import paths
from pyro_mcp.errors import InvalidArgumentError
from pyro_mcp.protocol.redaction import MARKER, MAX_SECRET_BYTES, MAX_SECRETS
from pyro_mcp.runtime.workspaces import secrets as ws

VALUE = "s3cr3t-VALUE-42"


def test_parse_literal_and_file(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN KEY-----\nabc\n")
    found = ws.parse([{"name": "TOKEN", "value": VALUE}, {"name": "KEY", "file_path": str(key)}])
    assert [s.view() for s in found] == [
        {"name": "TOKEN", "source_kind": "literal"},
        {"name": "KEY", "source_kind": "file"},
    ]
    assert found[0].value == VALUE.encode() and found[1].value == key.read_bytes()
    assert VALUE not in repr(found[0])
    assert ws.parse(None) == [] and ws.parse([]) == []


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({"name": "A", "value": "x"}, "must be a list"),
        ("A=x", "must be a list"),
        (["A=x"], "must be an object"),
        ([{"name": "9A", "value": VALUE}], "must match"),
        ([{"name": "A", "value": ""}], "must not be empty"),
        ([{"name": "A", "value": "x" * (MAX_SECRET_BYTES + 1)}], "larger than"),
        ([{"name": "A", "value": b"bytes"}], "string value"),
        ([{"name": "A", "value": 5}], "string value"),
        ([{"name": "A"}], "exactly one of value and file_path"),
        ([{"name": "A", "value": "x", "file_path": "/etc/hostname"}], "exactly one"),
        ([{"name": "A", "value": "x", "kind": "literal"}], "unknown secret field"),
        ([{"name": "A", "value": VALUE}, {"name": "A", "value": "y"}], "defined twice"),
        ([{"name": f"S{i}", "value": "v"} for i in range(MAX_SECRETS + 1)], "at most"),
        ([{"name": "A", "file_path": 7}], "file_path must be a path"),
    ],
)
def test_parse_refuses_without_showing_values(secrets: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        ws.parse(secrets)  # type: ignore[arg-type]
    assert VALUE not in str(info.value)


def test_file_secrets_must_be_small_regular_utf8_files(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_SECRET_BYTES + 1))
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [
        (big, "larger than"),
        (binary, "UTF-8"),
        (tmp_path, "not a regular file|cannot read"),
        (fifo, "not a regular file"),
        (tmp_path / "missing", "cannot read"),
    ]
    for path, message in cases:
        with pytest.raises(InvalidArgumentError, match=message):
            ws.parse([{"name": "F", "file_path": str(path)}])
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(InvalidArgumentError, match="must not be empty"):
        ws.parse([{"name": "F", "file_path": str(tmp_path / "empty")}])


def test_store_is_private_loads_back_and_is_removed(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        check_store(tmp_path)
    finally:
        os.umask(old)


def check_store(tmp_path: Path) -> None:
    workspace = paths.ensure_private_dir(tmp_path / "ws")
    found = ws.parse([{"name": "B_TOKEN", "value": VALUE}, {"name": "A", "value": "é-x"}])
    ws.store(workspace, found)
    folder = workspace / ws.SECRETS_DIR
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {p.name for p in folder.iterdir()} == {"A", "B_TOKEN", ws.KINDS_FILE}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    assert VALUE.encode() not in (folder / ws.KINDS_FILE).read_bytes()
    assert ws.views(workspace) == [
        {"name": "A", "source_kind": "literal"},
        {"name": "B_TOKEN", "source_kind": "literal"},
    ]
    assert ws.load(workspace) == {"A": "é-x".encode(), "B_TOKEN": VALUE.encode()}
    assert ws.redactor(workspace).redact(b"t=" + VALUE.encode()) == b"t=" + MARKER
    with pytest.raises(OSError):
        ws.store(workspace, found)  # written once
    assert [p.name for p in workspace.iterdir()] == [ws.SECRETS_DIR]  # no temp left
    ws.remove(workspace)
    assert not folder.exists() and ws.views(workspace) == [] and ws.load(workspace) == {}
    assert not ws.redactor(workspace).active
    ws.remove(workspace)  # idempotent


def test_secret_env_mapping_and_cli_flags() -> None:
    assert ws.check_secret_env({"TOKEN": "GH_TOKEN"}, ["TOKEN"]) == {"TOKEN": "GH_TOKEN"}
    with pytest.raises(InvalidArgumentError, match="unknown workspace secret 'NOPE'"):
        ws.check_secret_env({"NOPE": "X"}, ["TOKEN"])
    assert ws.parse_secret_env_flags(["TOKEN", "KEY=SSH_KEY"]) == {
        "TOKEN": "TOKEN",
        "KEY": "SSH_KEY",
    }
    with pytest.raises(InvalidArgumentError, match="must match"):
        ws.parse_secret_env_flags(["TOKEN=bad-env"])


def test_redact_tree_and_errors_leave_nothing_of_a_value(tmp_path: Path) -> None:
    ws.store(tmp_path, ws.parse([{"name": "TOKEN", "value": VALUE}]))
    redactor = ws.RedactorCache().get(tmp_path)
    shown = MARKER.decode()
    tree = {"a": [VALUE, ("x" + VALUE, 3)], "b": {"c": None, "d": f"<{VALUE}>"}, "n": 1.5}
    assert ws.redact_tree(tree, redactor) == {
        "a": [shown, ["x" + shown, 3]], "b": {"c": None, "d": f"<{shown}>"}, "n": 1.5,
    }  # fmt: skip
    try:
        try:
            raise OSError(f"no such file: {VALUE}")
        except OSError as inner:
            raise InvalidArgumentError(f"bad {VALUE}", hint=VALUE, path=VALUE) from inner
    except InvalidArgumentError as exc:
        ws.redact_error(exc, redactor)
        assert VALUE not in f"{exc} {exc.to_dict()} {exc.args} {exc.hint}"
        assert exc.__cause__ is None and exc.__context__ is None
    none = ws.RedactorCache().get(tmp_path / "elsewhere")
    assert not none.active and ws.redact_tree(tree, none) is tree


def test_the_redactor_cache_follows_the_set_on_disk(tmp_path: Path) -> None:
    cache = ws.RedactorCache()
    assert not cache.get(tmp_path).active
    ws.store(tmp_path, ws.parse([{"name": "TOKEN", "value": VALUE}]))
    first = cache.get(tmp_path)
    assert first.active and cache.get(tmp_path) is first
    ws.remove(tmp_path)  # a workspace id reused after delete gets its own set
    ws.store(tmp_path, ws.parse([{"name": "OTHER", "value": "another-value"}]))
    assert cache.get(tmp_path).redact(b"another-value") == MARKER
