"""Firecracker's API client against a fake API server on a UNIX socket."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from framework.firecracker_harness import FakeApi
from pyro_mcp.errors import VmmError
from pyro_mcp.vmm.firecracker.api import FirecrackerApi


def test_put_sends_json_without_none_fields(fake_api: FakeApi, tmp_path: Path) -> None:
    api = FirecrackerApi(tmp_path / "api.sock")
    api.put("/drives/x", {"a": 1, "b": None, "nested": {"c": None, "d": [{"e": None}]}})
    api.patch("/vm", {"state": "Paused", "unused": None})
    assert fake_api.requests == [
        ("PUT", "/drives/x", {"a": 1, "nested": {"d": [{}]}}),
        ("PATCH", "/vm", {"state": "Paused"}),
    ]


def test_get_sends_no_body_and_returns_the_object(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.replies["/"] = b'{"state": "Running"}'
    assert FirecrackerApi(tmp_path / "api.sock").get("/") == {"state": "Running"}
    assert fake_api.requests == [("GET", "/", None)]  # Firecracker rejects a GET with a body


def test_rejection_carries_firecrackers_fault_message(fake_api: FakeApi, tmp_path: Path) -> None:
    fault = "Invalid kernel image path"
    fake_api.faults["/boot-source"] = (400, json.dumps({"fault_message": fault}).encode())
    with pytest.raises(VmmError, match=f"PUT /boot-source \\(400\\): {fault}") as caught:
        FirecrackerApi(tmp_path / "api.sock").put("/boot-source", {"kernel_image_path": "x"})
    assert caught.value.details == {"status": 400, "fault_message": fault}


def test_rejection_without_json_shows_the_body(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.faults["/"] = (500, b"internal trouble")
    with pytest.raises(VmmError, match="GET / \\(500\\): internal trouble"):
        FirecrackerApi(tmp_path / "api.sock").get("/")


def test_a_non_object_reply_is_an_error(fake_api: FakeApi, tmp_path: Path) -> None:
    fake_api.replies["/"] = b"[1, 2]"
    with pytest.raises(VmmError, match="not a JSON object"):
        FirecrackerApi(tmp_path / "api.sock").get("/")


def test_an_absent_api_is_a_vmm_error(tmp_path: Path) -> None:
    with pytest.raises(VmmError, match="PUT /actions failed") as caught:
        FirecrackerApi(tmp_path / "absent.sock").put("/actions", {"action_type": "InstanceStart"})
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_socket_paths_beyond_the_unix_limit_still_connect(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "api.sock"
    assert len(str(path)) > 108
    cwd = os.getcwd()
    os.chdir(deep)  # bind() has the same limit; the test binds by relative name
    try:
        fake = FakeApi(Path("api.sock"))
    finally:
        os.chdir(cwd)
    try:
        fake.replies["/"] = b'{"ok": true}'
        assert FirecrackerApi(path).get("/") == {"ok": True}
    finally:
        fake.close()
