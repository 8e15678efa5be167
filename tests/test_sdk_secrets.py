"""The SDK's redaction boundary: every workspace call's result and error leave with the
workspace's secrets redacted; create validates secrets before anything exists (no VM)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.errors import InvalidArgumentError, NotFoundError
from pyro_mcp.protocol.redaction import MARKER_TEXT
from pyro_mcp.runtime.workspaces import secrets as ws_secrets
from pyro_mcp.sdk import Pyro

VALUE = "tok-Zq8xV3pL2mN7"
WID = "0123456789ab"


class Leaky:
    """Stands in for the runtime's file service: answers and fails with the value in it."""

    def read(self, workspace_id: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return {"workspace_id": workspace_id, "content": f"x{VALUE}y", "lines": [VALUE, 1]}

    def write(self, workspace_id: str, path: str, **kwargs: Any) -> dict[str, Any]:
        raise NotFoundError(f"no {path}", hint=f"try {VALUE}", path=path)


@pytest.fixture
def pyro(tmp_path: Path) -> Pyro:
    pyro = Pyro(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    directory = pyro.workspaces.directory(WID)
    directory.mkdir(parents=True)
    ws_secrets.store(directory, ws_secrets.parse([{"name": "TOKEN", "value": VALUE}]))
    pyro.manager.__dict__["files"] = Leaky()  # the cached_property's slot
    return pyro


def test_results_are_redacted_whether_the_id_is_positional_or_named(pyro: Pyro) -> None:
    for result in (
        pyro.read_workspace_file(WID, "a"),
        pyro.read_workspace_file(workspace_id=WID, path="a"),
    ):
        assert result["content"] == f"x{MARKER_TEXT}y"
        assert result["lines"] == [MARKER_TEXT, 1]


def test_errors_are_redacted_and_lose_their_chain(pyro: Pyro) -> None:
    with pytest.raises(NotFoundError) as info:
        pyro.write_workspace_file(WID, f"/workspace/{VALUE}", text="x")
    exc = info.value
    assert VALUE not in f"{exc} {exc.to_dict()} {exc.args}"
    assert exc.details["path"] == f"/workspace/{MARKER_TEXT}"


def test_a_workspace_without_secrets_is_left_as_it_is(pyro: Pyro) -> None:
    other = "ba9876543210"
    assert pyro.read_workspace_file(other, "a")["content"] == f"x{VALUE}y"


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ([{"name": "1X", "value": "v"}], "must match"),
        ([{"name": "A", "value": "v"}, {"name": "A", "value": "w"}], "defined twice"),
        ([{"name": "A", "value": "v" * (64 * 1024 + 1)}], "larger than"),
        ([{"name": "A", "file_path": "/nonexistent/key"}], "cannot read"),
        ([{"name": "A"}], "exactly one of value and file_path"),
    ],
)
def test_create_refuses_bad_secrets_before_anything_exists(
    tmp_path: Path, secrets: list[dict[str, str]], message: str
) -> None:
    pyro = Pyro(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    with pytest.raises(InvalidArgumentError, match=message):
        pyro.create_workspace(environment="debian:12", secrets=secrets)
    workspaces = tmp_path / "state" / "workspaces"
    assert not workspaces.exists() or os.listdir(workspaces) == []
