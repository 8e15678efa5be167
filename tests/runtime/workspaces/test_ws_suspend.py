"""When start may resume a stopped workspace's memory snapshot, and why not (no VM)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp.runtime.workspaces import suspend

ROW = {
    "execution_mode": "qemu-tcg", "environment_version": "1.0.0", "vcpu_count": 1,
    "mem_mib": 1024, "network_policy": "off",
}  # fmt: skip


def suspended(tmp_path: Path, **identity: Any) -> Path:
    folder = tmp_path / suspend.DIR
    folder.mkdir()
    (folder / suspend.STATE).write_bytes(b"QEVM" + bytes(4096))
    manifest = {
        "identity": {**suspend._identity(ROW), **identity},
        "sha256": hashlib.sha256((folder / suspend.STATE).read_bytes()).hexdigest(),
        "ports": [{"name": "web", "run_id": "0" * 16, "ports": []}],
    }
    (folder / suspend.MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_nothing_kept_means_a_plain_boot(tmp_path: Path) -> None:
    assert suspend.plan(tmp_path, ROW) == suspend.Resume(None, "", [])
    assert not suspend.held(tmp_path)


def test_a_matching_snapshot_resumes_with_its_ports(tmp_path: Path) -> None:
    folder = suspended(tmp_path)
    assert suspend.held(tmp_path)
    plan = suspend.plan(tmp_path, ROW)
    assert plan.state == folder / suspend.STATE and plan.note == ""
    assert plan.ports[0]["name"] == "web"
    suspend.discard(tmp_path)
    assert not folder.exists() and not suspend.held(tmp_path)


@pytest.mark.parametrize(
    ("identity", "said"),
    [
        ({"host_kernel": "4.19.0-other"}, "another host_kernel"),
        ({"vmm": ["/usr/bin/qemu-system-x86_64", 1, 2]}, "another vmm"),
        ({"environment_version": "0.9.0", "mem_mib": 512}, "another environment_version, mem_mib"),
        ({"execution_mode": "qemu-kvm"}, "another execution_mode"),
    ],
)
def test_a_snapshot_of_another_host_or_build_is_refused(
    tmp_path: Path, identity: dict[str, Any], said: str
) -> None:
    suspended(tmp_path, **identity)
    plan = suspend.plan(tmp_path, ROW)
    assert plan.state is None and said in plan.note


def test_damage_and_garbage_are_refused(tmp_path: Path) -> None:
    folder = suspended(tmp_path)
    with (folder / suspend.STATE).open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff")
    assert "damaged" in suspend.plan(tmp_path, ROW).note
    (folder / suspend.MANIFEST).write_text("{not json")
    assert "unreadable" in suspend.plan(tmp_path, ROW).note
