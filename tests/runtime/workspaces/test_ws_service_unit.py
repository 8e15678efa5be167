"""Workspace service rules that need no VM: bad input refused before anything is made,
reconciliation of interrupted changes, lazy expiry, updates and logs.

Workspaces are written straight into the state store here; the tests that boot VMs are in
test_ws_integration.py.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp import paths
from pyro_mcp.errors import InvalidArgumentError, NotFoundError, WrongStateError
from pyro_mcp.runtime.workspaces import commands, locks, service
from pyro_mcp.sdk import Pyro
from pyro_mcp.state import workspaces as rows


def put_workspace(pyro: Pyro, workspace_id: str = "abc123def456", **fields: Any) -> Path:
    now = time.time()
    directory = paths.ensure_private_dir(pyro.workspaces.directory(workspace_id))
    record = {
        "workspace_id": workspace_id,
        "name": None,
        "labels": "{}",
        "environment": "debian:12",
        "environment_version": "1.0.0",
        "vcpu_count": 1,
        "mem_mib": 1024,
        "ttl_seconds": 600,
        "created_at": now,
        "last_activity_at": now,
        "expires_at": now + 600,
        "state": "stopped",
        "stop_reason": "stopped: stop_workspace",
        "workspace_dir": str(directory),
        "seed": json.dumps({"mode": "empty"}),
        **fields,
    }
    pyro.vms.store.insert("workspaces", record)
    return directory


def nothing_made(pyro: Pyro) -> bool:
    base = pyro.vms.store.root / "workspaces"
    empty = not base.exists() or not any(base.iterdir())
    return empty and (
        not pyro.vms.store.path.exists() or rows.list_workspaces(pyro.vms.store) == []
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vcpu_count": 0}, "vcpu_count must be between 1 and 8"),
        ({"mem_mib": 64}, "mem_mib must be between 256"),
        ({"ttl_seconds": 59}, "ttl_seconds must be between 60 and 3600"),
        ({"ttl_seconds": 3601}, "ttl_seconds must be between 60 and 3600"),
        ({"name": "x" * 121}, "workspace name"),
        ({"labels": {"bad key": "v"}}, "label key"),
        ({"labels": {"k": "two\nlines"}}, "label 'k'"),
        ({"network_policy": "everything"}, "network_policy must be one of"),
        ({"allow_hosts": ["example.com"]}, "allow_hosts needs a network"),
        ({"network_policy": "egress", "allow_hosts": ["no spaces.com"]}, "not a valid domain"),
        ({"network_policy": "egress", "allow_hosts": "example.com"}, "must be a list"),
        ({"secrets": [{"name": "A-1", "value": "b"}]}, "must match"),
        ({"secrets": [{"name": "A", "file_path": "/no/such/key"}]}, "cannot read"),
        ({"environment": "ubuntu:24.04"}, "ubuntu"),
        ({"seed_path": "/no/such/seed"}, "/no/such/seed"),
    ],
)
def test_bad_create_arguments_are_refused_before_anything_is_made(
    kwargs: dict[str, Any], message: str
) -> None:
    pyro = Pyro()
    args: dict[str, Any] = {"environment": "debian:12", **kwargs}
    with pytest.raises((InvalidArgumentError, NotFoundError), match=message):
        pyro.create_workspace(**args)
    assert nothing_made(pyro)


def test_a_hostile_seed_archive_is_refused_before_a_vm_or_record_exists(tmp_path: Path) -> None:
    seed = tmp_path / "seed.tar"
    info = tarfile.TarInfo("../../etc/cron.d/evil")
    info.size = 1
    with tarfile.open(seed, "w") as tar:
        tar.addfile(info, io.BytesIO(b"x"))
    pyro = Pyro()
    with pytest.raises(InvalidArgumentError, match=r"'\.\.'"):
        pyro.create_workspace(environment="debian:12", seed_path=seed)
    assert nothing_made(pyro)


def test_unknown_workspace_ids_say_how_to_find_the_right_one() -> None:
    pyro = Pyro()
    for call in (
        lambda: pyro.status_workspace("nope"),
        lambda: pyro.exec_workspace("nope", command="true"),
        lambda: pyro.read_workspace_file("nope", "x"),
        lambda: pyro.delete_workspace("../../etc"),
        lambda: pyro.logs_workspace("nope"),
    ):
        with pytest.raises(NotFoundError, match="pyro workspace list"):
            call()


def test_a_stopped_workspace_refuses_exec_and_file_operations_with_the_way_out() -> None:
    pyro = Pyro()
    put_workspace(pyro)
    for call in (
        lambda: pyro.exec_workspace("abc123def456", command="true"),
        lambda: pyro.read_workspace_file("abc123def456", "x"),
        lambda: pyro.diff_workspace("abc123def456"),
    ):
        with pytest.raises(WrongStateError, match="pyro workspace start abc123def456"):
            call()


def test_a_change_whose_process_died_shows_stopped_with_why() -> None:
    pyro = Pyro()
    put_workspace(pyro, state="resetting", stop_reason=None)
    status = pyro.status_workspace("abc123def456")
    assert status["state"] == "stopped"
    assert "interrupted" in status["stop_reason"] and "resetting" in status["stop_reason"]


def test_a_change_in_progress_is_waited_for_not_disturbed(monkeypatch: pytest.MonkeyPatch) -> None:
    pyro = Pyro()
    directory = put_workspace(pyro, state="starting", stop_reason=None)
    monkeypatch.setattr(service, "CHANGE_WAIT_S", 0.5)
    seen: list[str] = []
    with locks.hold(directory, locks.LIFE, exclusive=True, timeout=0):
        worker = threading.Thread(
            target=lambda: seen.append(pyro.status_workspace("abc123def456")["state"])
        )
        worker.start()
        worker.join()
        with pytest.raises(WrongStateError, match="still starting"):
            pyro.exec_workspace("abc123def456", command="true")
    assert seen == ["starting"]


def test_an_expired_workspace_is_deleted_by_the_next_call_that_touches_it() -> None:
    pyro = Pyro()
    directory = put_workspace(pyro, expires_at=time.time() - 1)
    put_workspace(pyro, "aaaaaaaaaaaa", expires_at=time.time() - 1)
    with pytest.raises(NotFoundError, match="expired"):
        pyro.status_workspace("abc123def456")
    assert not directory.exists()
    assert pyro.list_workspaces() == {"count": 0, "workspaces": []}
    assert not pyro.workspaces.directory("aaaaaaaaaaaa").exists()


def test_update_sets_and_clears_names_and_labels_and_refuses_a_no_op() -> None:
    pyro = Pyro()
    put_workspace(pyro)
    wid = "abc123def456"
    one = pyro.update_workspace(wid, name="api", labels={"team": "x", "tier": "1"})
    assert (one["name"], one["labels"]) == ("api", {"team": "x", "tier": "1"})
    two = pyro.update_workspace(wid, clear_labels=["tier"], labels={"team": "y"})
    assert two["labels"] == {"team": "y"}
    with pytest.raises(InvalidArgumentError, match="changes nothing"):
        pyro.update_workspace(wid, name="api")
    with pytest.raises(InvalidArgumentError, match="either name or clear_name"):
        pyro.update_workspace(wid, name="a", clear_name=True)
    assert pyro.update_workspace(wid, clear_name=True)["name"] is None


def test_logs_show_every_command_with_the_tail_of_its_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pyro = Pyro()
    directory = put_workspace(pyro)
    store = pyro.vms.store
    first = rows.begin_command(store, "abc123def456", "make", "/workspace", 1.0)
    rows.finish_command(store, "abc123def456", first, exit_code=0, duration_ms=3)
    rows.begin_command(store, "abc123def456", "lost", "/workspace", 2.0)  # its caller died
    (directory / "commands").mkdir()
    (directory / "commands" / "000001.stdout").write_text("a" * 10 + "tail")
    monkeypatch.setattr(commands, "LOG_TAIL_BYTES", 4)
    logs = pyro.logs_workspace("abc123def456")
    assert logs["count"] == 2
    one, two = logs["entries"]
    assert (one["stdout"], one["stdout_truncated"], one["exit_code"]) == ("tail", True, 0)
    assert (one["stderr"], one["stderr_truncated"], one["stderr_file"]) == ("", False, None)
    assert (two["command"], two["exit_code"]) == ("lost", None)
    assert pyro.status_workspace("abc123def456")["last_command"]["command"] == "lost"


def test_a_vm_left_by_a_killed_create_is_ended_when_the_workspace_settles() -> None:
    pyro = Pyro()
    put_workspace(pyro, state="creating", stop_reason=None)
    orphan = pyro.vms.create_vm(environment="debian:12", _workspace_id="abc123def456")
    other = pyro.vms.create_vm(environment="debian:12")
    status = pyro.status_workspace("abc123def456")
    assert status["state"] == "stopped" and "interrupted" in status["stop_reason"]
    assert pyro.vms.store.get_vm(orphan["vm_id"]) is None
    assert pyro.vms.store.get_vm(other["vm_id"]) is not None
