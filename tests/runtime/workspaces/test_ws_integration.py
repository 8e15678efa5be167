"""Workspaces against real VMs (QEMU TCG on this host), through the SDK and the CLI.

Every test ends with the leak check of `leak_guard` (tests/vm_leaks.py): no
supervisor, VMM, socket, disk or workspace directory is left once it is over.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pyro_mcp.errors import ConflictError, InvalidArgumentError, NotFoundError, WrongStateError
from pyro_mcp.sdk import Pyro
from pyro_mcp.state import workspaces as workspace_rows

if TYPE_CHECKING:
    from framework.vm_leaks import LeakGuard

pytestmark = [pytest.mark.integration, pytest.mark.vm]

ENV = "debian:12"
WORKSPACE_KEYS = {
    "workspace_id", "name", "labels", "environment", "environment_version", "vcpu_count",
    "mem_mib", "ttl_seconds", "created_at", "last_activity_at", "expires_at", "state",
    "network_policy", "network_enabled", "allow_host_compat", "guest_ip", "tap_name",
    "execution_mode", "workspace_path", "workspace_seed", "secrets", "command_count",
    "last_command", "reset_count", "last_reset_at", "service_count", "running_service_count",
    "metadata",
}  # fmt: skip


def make_seed(root: Path) -> Path:
    seed = root / "seed"
    (seed / "src").mkdir(parents=True)
    (seed / "README.md").write_text("hello\n")
    (seed / "src" / "app.py").write_text("print('one')\nprint('two')\n")
    (seed / "src" / "old.txt").write_text("to be renamed\n")
    (seed / "gone.txt").write_text("delete me\n")
    (seed / "empty").mkdir()
    (seed / "link").symlink_to("src/app.py")
    run = seed / "run.sh"
    run.write_text("#!/bin/sh\necho ran\n")
    run.chmod(0o755)
    return seed


def tree_of(pyro: Pyro, workspace_id: str) -> dict[str, Any]:
    """Every entry below /workspace as path -> (type, size, link target), from the guest."""
    listing = pyro.list_workspace_files(workspace_id, recursive=True)
    return {
        e["path"]: (e["artifact_type"], e["size_bytes"], e["link_target"])
        for e in listing["entries"]
    }


def run(pyro: Pyro, workspace_id: str, command: str) -> dict[str, Any]:
    result = pyro.exec_workspace(workspace_id, command=command)
    assert result["exit_code"] == 0, result
    return result


GIT_PATCH = """\
diff --git a/src/app.py b/src/app.py
--- a/src/app.py
+++ b/src/app.py
@@ -1,2 +1,2 @@
 print('one')
-print('two')
+print('TWO')
diff --git a/notes/new.txt b/notes/new.txt
new file mode 100644
--- /dev/null
+++ b/notes/new.txt
@@ -0,0 +1 @@
+brand new
diff --git a/gone.txt b/gone.txt
deleted file mode 100644
--- a/gone.txt
+++ /dev/null
@@ -1 +0,0 @@
-delete me
diff --git a/src/old.txt b/src/renamed.txt
similarity index 100%
rename from src/old.txt
rename to src/renamed.txt
"""


def test_workspace_lifecycle_files_patch_diff_export_reset(
    vm_pyro: Pyro, tmp_path: Path, leak_guard: LeakGuard
) -> None:
    pyro = vm_pyro
    ws = pyro.create_workspace(
        environment=ENV, seed_path=make_seed(tmp_path), name="flow", labels={"team": "a"}
    )
    wid = ws["workspace_id"]
    assert set(ws) >= WORKSPACE_KEYS
    assert ws["state"] == "started" and ws["labels"] == {"team": "a"} and ws["name"] == "flow"
    assert ws["workspace_seed"]["mode"] == "directory"
    assert ws["workspace_seed"]["entry_count"] == 8
    assert ws["expires_at"] == pytest.approx(ws["created_at"] + 600)
    baseline = tree_of(pyro, wid)
    assert baseline["/workspace/link"] == ("symlink", len("src/app.py"), "src/app.py")

    # exec: cwd /workspace, sequence numbers, exit codes pass through
    first = pyro.exec_workspace(wid, command="pwd; ./run.sh; exit 3")
    assert (first["stdout"], first["exit_code"], first["sequence"]) == ("/workspace\nran\n", 3, 1)
    assert pyro.exec_workspace(wid, command=["cat", "README.md"])["sequence"] == 2

    # files: write, read (truncated), list
    wrote = pyro.write_workspace_file(wid, "deep/dir/f.txt", text="x" * 5000)
    assert (wrote["path"], wrote["bytes_written"]) == ("/workspace/deep/dir/f.txt", 5000)
    read = pyro.read_workspace_file(wid, "/workspace/deep/dir/f.txt", max_bytes=100)
    assert (read["content"], read["size_bytes"], read["truncated"]) == ("x" * 100, 5000, True)
    full = pyro.read_workspace_file(wid, "README.md")
    assert (full["content"], full["truncated"]) == ("hello\n", False)
    run(pyro, wid, "rm -r deep")

    # patch: git's own format, with new, deleted and renamed files
    patched = pyro.apply_workspace_patch(wid, patch=GIT_PATCH)
    assert patched["summary"] == {
        "total": 4, "added": 1, "modified": 1, "deleted": 1, "renamed": 1
    }  # fmt: skip
    assert pyro.read_workspace_file(wid, "src/app.py")["content"] == "print('one')\nprint('TWO')\n"
    bad = GIT_PATCH.replace("-print('two')", "-print('three')")
    before = tree_of(pyro, wid)
    with pytest.raises(InvalidArgumentError):
        pyro.apply_workspace_patch(wid, patch=bad)
    assert tree_of(pyro, wid) == before, "a failing patch changed something"

    # diff against the baseline, then the patch it gives reproduces the workspace
    changed = pyro.diff_workspace(wid)
    statuses = {e["path"]: e["status"] for e in changed["entries"]}
    assert statuses == {
        "/workspace/src/app.py": "modified",
        "/workspace/notes/new.txt": "added",
        "/workspace/gone.txt": "deleted",
        "/workspace/src/old.txt": "deleted",
        "/workspace/src/renamed.txt": "added",
    }
    assert changed["summary"]["text_patched"] == 5
    after_patch = tree_of(pyro, wid)

    # export: a file and a directory; an existing output is refused
    out_file = tmp_path / "out" / "app.py"
    exported = pyro.export_workspace(wid, "src/app.py", output_path=out_file)
    assert exported["artifact_type"] == "file"
    assert out_file.read_text() == "print('one')\nprint('TWO')\n"
    with pytest.raises(ConflictError):
        pyro.export_workspace(wid, "src/app.py", output_path=out_file)
    exported = pyro.export_workspace(wid, "src", output_path=tmp_path / "src-copy")
    assert sorted(p.name for p in (tmp_path / "src-copy").iterdir()) == ["app.py", "renamed.txt"]

    # reset: back to the baseline, history kept, then the diff's patch rebuilds the changes
    reset = pyro.reset_workspace(wid)
    assert reset["reset_count"] == 1 and reset["last_reset_at"] is not None
    assert reset["command_count"] == 3 and reset["workspace_reset"]["entry_count"] == 8
    assert tree_of(pyro, wid) == baseline
    assert pyro.diff_workspace(wid)["changed"] is False
    pyro.apply_workspace_patch(wid, patch=changed["patch"])
    assert tree_of(pyro, wid) == after_patch
    assert pyro.exec_workspace(wid, command="true")["sequence"] == 4

    logs = pyro.logs_workspace(wid)
    assert [e["sequence"] for e in logs["entries"]] == [1, 2, 3, 4]
    assert logs["entries"][0]["stdout"] == "/workspace\nran\n"
    assert logs["entries"][0]["exit_code"] == 3

    listed = pyro.list_workspaces()
    assert listed["count"] == 1 and listed["workspaces"][0]["expires_at"] == ws["expires_at"]
    updated = pyro.update_workspace(wid, clear_name=True, labels={"b": "2"}, clear_labels=["team"])
    assert (updated["name"], updated["labels"]) == (None, {"b": "2"})
    assert pyro.delete_workspace(wid)["deleted"] is True
    with pytest.raises(NotFoundError):
        pyro.status_workspace(wid)


def hostile_tar(path: Path, name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Path:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    data = b"x" if kind == tarfile.REGTYPE else b""
    info.size = len(data)
    with tarfile.open(path, "w") as tar:
        tar.addfile(info, io.BytesIO(data))
    return path


def test_paths_outside_the_workspace_are_refused_everywhere(
    vm_pyro: Pyro, tmp_path: Path, leak_guard: LeakGuard
) -> None:
    pyro = vm_pyro
    wid = pyro.create_workspace(environment=ENV)["workspace_id"]
    run(pyro, wid, "ln -s /etc out && ln -s ../../etc/passwd up && mkdir d && echo hi > d/f")
    never = tmp_path / "never"
    refused = []
    for path in ["../x", "/etc/passwd", "/workspace/../etc/passwd", "/workspacex/f"]:
        refused += [
            lambda p=path: pyro.read_workspace_file(wid, p),
            lambda p=path: pyro.write_workspace_file(wid, p, text="x"),
            lambda p=path: pyro.list_workspace_files(wid, path=p),
            lambda p=path: pyro.export_workspace(wid, p, output_path=never),
            lambda p=path: pyro.push_workspace_sync(wid, tmp_path / "push-src", dest=p),
        ]
    # symlinks that lead out: `out` -> /etc, `up` -> ../../etc/passwd
    refused += [
        lambda: pyro.read_workspace_file(wid, "out/passwd"),
        lambda: pyro.read_workspace_file(wid, "up"),
        lambda: pyro.write_workspace_file(wid, "out/passwd", text="x"),
        lambda: pyro.write_workspace_file(wid, "out/new", text="x"),
        lambda: pyro.list_workspace_files(wid, path="out/ssl"),
        lambda: pyro.export_workspace(wid, "out/passwd", output_path=never),
        lambda: pyro.export_workspace(wid, "up", output_path=never),
        lambda: pyro.push_workspace_sync(wid, tmp_path / "push-src", dest="out"),
        lambda: pyro.push_workspace_sync(wid, tmp_path / "push-src", dest="up/x"),
    ]
    (tmp_path / "push-src").mkdir()
    (tmp_path / "push-src" / "passwd").write_text("x")
    for call in refused:
        with pytest.raises((InvalidArgumentError, NotFoundError, WrongStateError)):
            call()
    assert not never.exists()
    guest_etc = run(pyro, wid, "cat /etc/passwd; ls /etc | wc -l")["stdout"]
    assert guest_etc.startswith("root:") and "\nx" not in guest_etc
    assert "new" not in run(pyro, wid, "ls /etc")["stdout"].split()

    # archives pushed into the workspace are checked before anything is written
    cases = {
        "abs.tar": ("/etc/evil", tarfile.REGTYPE, ""),
        "dots.tar": ("../evil", tarfile.REGTYPE, ""),
        "link.tar": ("esc", tarfile.SYMTYPE, "../../../etc"),
        "dev.tar": ("dev", tarfile.CHRTYPE, ""),
        "hard.tar": ("hard", tarfile.LNKTYPE, "/etc/passwd"),
    }
    before = tree_of(pyro, wid)
    for name, (member, kind, link) in cases.items():
        with pytest.raises(InvalidArgumentError):
            pyro.push_workspace_sync(wid, hostile_tar(tmp_path / name, member, kind, link))
    assert tree_of(pyro, wid) == before

    # a big file read with a small max_bytes: the head, truncated, never an error for size
    run(pyro, wid, "yes abcdefgh | head -c 3000000 > big.txt")
    big = pyro.read_workspace_file(wid, "big.txt", max_bytes=18)
    assert big == big | {"content": "abcdefgh\nabcdefgh\n", "truncated": True,
                         "size_bytes": 3000000}  # fmt: skip

    # sync push: a directory and a .tar.gz into a subdirectory
    src = tmp_path / "push"
    (src / "a").mkdir(parents=True)
    (src / "a" / "one.txt").write_text("1\n")
    pushed = pyro.push_workspace_sync(wid, src, dest="sub")
    assert pushed["workspace_sync"]["destination"] == "/workspace/sub"
    archive = tmp_path / "more.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "a" / "one.txt", arcname="two.txt")
    pyro.push_workspace_sync(wid, archive, dest="/workspace/sub/a")
    assert pyro.read_workspace_file(wid, "sub/a/two.txt")["content"] == "1\n"
    assert pyro.read_workspace_file(wid, "sub/a/one.txt")["content"] == "1\n"


def cli(args: list[str], cache_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYRO_CACHE_DIR": str(cache_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_mcp.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def test_cli_concurrent_execs_get_distinct_sequences_and_exit_codes(
    vm_pyro: Pyro, built_debian12: Any, tmp_path: Path, leak_guard: LeakGuard
) -> None:
    seed = make_seed(tmp_path)
    made = cli(["workspace", "create", ENV, "--seed-path", str(seed), "--id-only"],
               built_debian12.cache_dir)  # fmt: skip
    out, err = made.communicate(timeout=300)
    assert made.returncode == 0, err.decode()
    wid = out.decode().strip()
    row = vm_pyro.vms.store.get_vm(vm_pyro.workspaces.row(wid)["vm_id"])
    assert row is not None
    leak_guard.add_supervisor_of(row)

    procs = [
        cli(["workspace", "exec", wid, "--json", "--", "sh", "-c", f"sleep 1; exit {code}"],
            built_debian12.cache_dir)
        for code in (5, 6)
    ]  # fmt: skip
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append((proc.returncode, json.loads(out)))
    assert sorted(code for code, _ in results) == [5, 6]
    assert sorted(r["sequence"] for _, r in results) == [1, 2]
    logs = vm_pyro.logs_workspace(wid)
    assert sorted(e["exit_code"] for e in logs["entries"]) == [5, 6]

    read = cli(["workspace", "file", "read", wid, "src/app.py", "--content-only"],
               built_debian12.cache_dir)  # fmt: skip
    out, err = read.communicate(timeout=60)
    assert (read.returncode, out, err) == (0, b"print('one')\nprint('two')\n", b"")
    gone = cli(["workspace", "delete", wid, "--json"], built_debian12.cache_dir)
    out, _ = gone.communicate(timeout=120)
    assert json.loads(out)["deleted"] is True


def test_a_dead_vm_shows_stopped_with_the_reason_and_start_keeps_the_disk(
    vm_pyro: Pyro, leak_guard: LeakGuard
) -> None:
    pyro = vm_pyro
    wid = pyro.create_workspace(environment=ENV)["workspace_id"]
    run(pyro, wid, "echo kept > data.txt && sync")
    row = pyro.vms.store.get_vm(pyro.workspaces.row(wid)["vm_id"])
    assert row is not None
    vmm = leak_guard.vmm_of(leak_guard.add_supervisor_of(row))
    os.kill(vmm.pid, 9)
    leak_guard.wait_until(
        lambda: pyro.status_workspace(wid)["state"] == "stopped", "the workspace to stop", 30
    )
    status = pyro.status_workspace(wid)
    assert "vmm_exited" in status["stop_reason"] or "VMM" in status["stop_reason"], status
    with pytest.raises(WrongStateError, match="start it"):
        pyro.exec_workspace(wid, command="true")

    started = pyro.start_workspace(wid)
    assert started["state"] == "started" and started["stop_reason"] is None
    assert pyro.read_workspace_file(wid, "data.txt")["content"] == "kept\n"
    stopped = pyro.stop_workspace(wid)
    assert stopped["state"] == "stopped"
    assert stopped["stop_reason"] == "stopped: stop_workspace"
    assert pyro.list_workspaces()["workspaces"][0]["state"] == "stopped"


def test_the_vm_ends_at_the_ttl_alone_and_the_next_list_deletes_the_workspace(
    vm_pyro: Pyro, leak_guard: LeakGuard
) -> None:
    pyro = vm_pyro
    ws = pyro.create_workspace(environment=ENV, ttl_seconds=60)
    wid = ws["workspace_id"]
    run(pyro, wid, "echo history")
    row = pyro.vms.store.get_vm(ws_vm := pyro.workspaces.row(wid)["vm_id"])
    assert row is not None
    sup = leak_guard.add_supervisor_of(row)
    vmm = leak_guard.vmm_of(sup)
    directory = pyro.workspaces.directory(wid)
    # Nothing of pyro runs from here on but the supervisor itself: it alone ends the VM.
    leak_guard.wait_until(lambda: not sup.alive(), "the supervisor to end at the TTL", 120)
    assert time.time() >= ws["expires_at"]
    assert not vmm.alive()
    # The workspace is not the supervisor's business: it waits for the next pyro call.
    assert directory.is_dir() and pyro.vms.store.get("workspaces", wid) is not None
    assert pyro.list_workspaces() == {"count": 0, "workspaces": []}
    assert not directory.exists()
    assert pyro.vms.store.get("workspaces", wid) is None
    assert workspace_rows.list_commands(pyro.vms.store, wid) == []
    assert pyro.vms.store.get_vm(ws_vm) is None
    with pytest.raises(NotFoundError):
        pyro.status_workspace(wid)
