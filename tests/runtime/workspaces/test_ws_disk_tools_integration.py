"""Disk tools on a stopped workspace (QEMU TCG on this host): a helper VM reads the disk, the
host parses none of it. Listing and reading agree with what the guest wrote (a name with
spaces, a symlink leading out: listed, never followed); the export is one ext4 image of the
root with no secret in it; a guest that wrote garbage over its own superblock gets a clear
error and harms nothing. `leak_guard` proves the helper VMs left nothing. No durations.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pyro_mcp.errors import InvalidArgumentError, PyroError, WrongStateError
from pyro_mcp.sdk import Pyro

if TYPE_CHECKING:
    from framework.vm_leaks import LeakGuard

pytestmark = [pytest.mark.integration, pytest.mark.vm]

ENV = "debian:12"
SECRET = "disk-secret-Qm83vXk2Lp"
MARKER = "pyro-outside-marker-5d1e"


def test_disk_tools_read_a_stopped_workspace_through_a_helper_vm(
    vm_pyro: Pyro, leak_guard: LeakGuard, tmp_path: Path
) -> None:
    pyro = vm_pyro
    wid = pyro.create_workspace(environment=ENV, secrets=[{"name": "TOKEN", "value": SECRET}])[
        "workspace_id"
    ]
    script = (
        "mkdir -p sub && printf hello > 'sub/with space.txt' && ln -s /etc/passwd link && "
        f'echo {MARKER} > /etc/pyro-outside && test -n "$TOKEN" && sync'
    )
    assert pyro.exec_workspace(wid, command=script, secret_env={"TOKEN": "TOKEN"})["exit_code"] == 0
    with pytest.raises(WrongStateError, match="reads a stopped workspace"):
        pyro.list_workspace_disk(wid)
    pyro.stop_workspace(wid)

    listing = pyro.list_workspace_disk(wid, recursive=True)
    entries = {e["path"]: e for e in listing["entries"]}
    assert entries["/workspace/sub/with space.txt"]["size_bytes"] == 5
    link = entries["/workspace/link"]
    assert (link["artifact_type"], link["link_target"]) == ("symlink", "/etc/passwd")
    assert pyro.list_workspace_disk(wid, path="sub")["entries"][0]["path"] == (
        "/workspace/sub/with space.txt"
    )
    read = pyro.read_workspace_disk(wid, "sub/with space.txt")
    assert (read["content"], read["size_bytes"], read["truncated"]) == ("hello", 5, False)
    for path in ("link", "/etc/passwd", "../etc/passwd"):
        with pytest.raises(PyroError):
            pyro.read_workspace_disk(wid, path)

    image = tmp_path / "root.ext4"
    exported = pyro.export_workspace_disk(wid, output_path=image)
    assert exported["disk_format"] == "ext4" and exported["output_path"] == str(image)
    assert exported["bytes_written"] > 0
    with image.open("rb") as handle:
        handle.seek(1080)
        assert handle.read(2) == b"\x53\xef"  # the ext4 magic: a file system, written by mke2fs
    assert contains(image, MARKER.encode()), "the root outside /workspace is in the image"
    assert not contains(image, SECRET.encode()), "no secret in an export"
    with pytest.raises(PyroError, match="already exists"):
        pyro.export_workspace_disk(wid, output_path=image)

    started = pyro.start_workspace(wid)  # the helpers changed nothing: it resumes
    assert started["workspace_start"]["resumed"] is True, started["workspace_start"]
    pyro.delete_workspace(wid)


def test_a_disk_its_guest_wrecked_gets_a_clear_error(vm_pyro: Pyro, leak_guard: LeakGuard) -> None:
    pyro = vm_pyro
    wid = pyro.create_workspace(environment=ENV)["workspace_id"]
    wreck = "dd if=/dev/urandom of=/dev/vdb bs=1024 seek=1 count=64 conv=notrunc,fsync 2>&1"
    assert pyro.exec_workspace(wid, command=wreck)["exit_code"] == 0
    pyro.stop_workspace(wid)
    for tool in (
        lambda: pyro.list_workspace_disk(wid),
        lambda: pyro.read_workspace_disk(wid, "x"),
    ):
        with pytest.raises(InvalidArgumentError, match="cannot be read"):
            tool()
    pyro.delete_workspace(wid)


def contains(path: Path, needle: bytes, chunk: int = 16 << 20) -> bool:
    with path.open("rb") as handle:
        tail = b""
        while block := handle.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-len(needle) :]
    return False
