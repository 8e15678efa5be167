"""Workspace diffs on the host: manifests compared with the baseline, and git patches rendered.

Manifests are built by hand, or from real trees in tmp_path; the patches go through real
`git apply`. No VM is involved.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pyro_mcp import paths
from pyro_mcp.agent_client.files import Manifest, ManifestEntry
from pyro_mcp.errors import GuestError, IntegrityError
from pyro_mcp.protocol import file_ops as pf
from pyro_mcp.runtime.workspaces import diff
from pyro_mcp.runtime.workspaces.diff import Baseline, Change

GIT = shutil.which("git")
MB = diff.MAX_TEXT_BYTES


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(
    path: str,
    kind: str = "file",
    *,
    data: bytes | None = b"x",
    size: int | None = None,
    mtime: int = 10,
    link: str | None = None,
    hashed: bool = True,
) -> ManifestEntry:
    """A manifest entry; a file's sha256 and size follow from data unless given."""
    is_file = kind == "file"
    digest = sha(data) if is_file and hashed and data is not None else None
    length = size if size is not None else (len(data) if is_file and data is not None else 0)
    return ManifestEntry(path, kind, length, mtime, digest, link)


def manifest(*entries: ManifestEntry, started: int = 100, truncated: bool = False) -> Manifest:
    hashed = sum(e.sha256 is not None for e in entries)
    return Manifest(tuple(entries), truncated=truncated, hashed=hashed, started_ns=started)


def baseline(*entries: ManifestEntry, started: int = 100) -> Baseline:
    return Baseline({e.path: e for e in entries}, started)


def tree_manifest(root: Path, since: dict[str, tuple[int, int]] | None = None) -> Manifest:
    """What the guest's tree.manifest answers for a real directory."""
    started = time.time_ns()
    entries = []
    for top, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            full = Path(top, name)
            rel, st = full.relative_to(root).as_posix(), full.lstat()
            if stat.S_ISREG(st.st_mode):
                key = (st.st_size, st.st_mtime_ns)
                digest = None if (since or {}).get(rel) == key else sha(full.read_bytes())
                entries.append(ManifestEntry(rel, "file", *key, digest))
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(full)
                entries.append(
                    ManifestEntry(rel, "symlink", st.st_size, st.st_mtime_ns, None, target)
                )
            else:
                kind = "directory" if stat.S_ISDIR(st.st_mode) else "other"
                entries.append(ManifestEntry(rel, kind, st.st_size, st.st_mtime_ns, None))
    return manifest(*entries, started=started)


def file_contents(root: Path) -> dict[str, bytes]:
    found = {}
    for top, _dirs, files in os.walk(root):
        for name in files:
            full = Path(top, name)
            if not full.is_symlink():
                found[full.relative_to(root).as_posix()] = full.read_bytes()
    return found


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def git_apply(patch: str, cwd: Path, tmp_path: Path) -> None:
    """Run real `git apply --check`, then `git apply`, outside any repository."""
    assert GIT is not None
    patch_file = tmp_path / "changes.patch"
    patch_file.write_bytes(patch.encode())
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "GIT_CEILING_DIRECTORIES": str(tmp_path),  # never pick up a repository above
        "GIT_CONFIG_NOSYSTEM": "1",
        "LC_ALL": "C",
    }
    for extra in (["--check"], []):
        run = subprocess.run(
            [GIT, "apply", *extra, str(patch_file)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stderr


def rendered(changes: list[Change], old: dict[str, bytes], new: dict[str, bytes]) -> dict[str, Any]:
    result = diff.render(changes, old, new)
    json.dumps(result)  # the result goes out as JSON as it is
    return result


def patch_of(result: dict[str, Any], path: str) -> str | None:
    by_path = {item["path"]: item["text_patch"] for item in result["entries"]}
    patch: str | None = by_path["/workspace/" + path]
    return patch


# --- baseline -----------------------------------------------------------------------------


def test_since_trusts_only_files_older_than_the_walk() -> None:
    base = baseline(
        entry("old.txt", mtime=99),
        entry("racy.txt", mtime=100),
        entry("future.txt", mtime=150),
        entry("dir", "directory", mtime=5),
        entry("link", "symlink", link="old.txt", mtime=5),
        started=100,
    )
    assert base.since() == {"old.txt": (1, 99)}


def test_baseline_round_trips_through_disk(tmp_path: Path) -> None:
    taken = manifest(
        entry("a.txt", data=b"a\n", mtime=7),
        entry("dir", "directory"),
        entry("dir/link", "symlink", link="../a.txt"),
        entry("naïve name.txt", data=b""),
        started=1234,
    )
    path = tmp_path / "baseline.json"
    saved = diff.save_baseline(path, taken)
    loaded = diff.load_baseline(path)
    assert loaded == saved
    assert loaded.started_ns == 1234
    assert loaded.entries == {e.path: e for e in taken.entries}
    assert b"\n" not in path.read_bytes() and b", " not in path.read_bytes()  # compact


def test_save_baseline_replaces_atomically_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    diff.save_baseline(path, manifest(entry("one")))
    diff.save_baseline(path, manifest(entry("two")))
    assert list(tmp_path.iterdir()) == [path]
    assert set(diff.load_baseline(path).entries) == {"two"}


def test_save_baseline_cleans_up_after_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "baseline.json"
    diff.save_baseline(path, manifest(entry("kept")))

    def broken_replace(source: object, target: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(paths.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        diff.save_baseline(path, manifest(entry("lost")))
    assert list(tmp_path.iterdir()) == [path]
    assert set(diff.load_baseline(path).entries) == {"kept"}


def test_save_baseline_refuses_incomplete_manifests(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    with pytest.raises(GuestError, match="too many entries"):
        diff.save_baseline(path, manifest(entry("a"), truncated=True))
    with pytest.raises(GuestError, match="sha256"):
        diff.save_baseline(path, manifest(entry("a", hashed=False)))
    assert not path.exists()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b'{"schema":2,"started_ns":1,"entries":[]}',
        b'{"schema":1,"started_ns":"1","entries":[]}',
        b'{"schema":1,"started_ns":1,"entries":[["a","file",1,1]]}',
        b'{"schema":1,"started_ns":1,"entries":[["a","file",1,1,null,null]]}',
        b'{"schema":1,"started_ns":1,"entries":[["a","file","1",1,"ab",null]]}',
    ],
)
def test_load_baseline_refuses_a_damaged_record(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "baseline.json"
    path.write_bytes(content)
    with pytest.raises(IntegrityError, match="baseline"):
        diff.load_baseline(path)


def test_load_baseline_of_a_missing_record(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="cannot be read"):
        diff.load_baseline(tmp_path / "absent.json")


# --- changes ------------------------------------------------------------------------------


def test_changes_reports_every_status_sorted_by_path() -> None:
    base = baseline(
        entry("same.txt", data=b"same"),
        entry("unhashed.txt", data=b"same"),
        entry("edited.txt", data=b"old"),
        entry("gone.txt"),
        entry("swap", data=b"file"),
    )
    current = manifest(
        entry("same.txt", data=b"same", mtime=50),  # touched, rehashed, same bytes
        entry("unhashed.txt", data=b"same", hashed=False),  # matched since
        entry("edited.txt", data=b"new"),
        entry("new.txt"),
        entry("swap", "symlink", link="elsewhere"),
    )
    assert diff.changes(base, current) == [
        Change("edited.txt", "modified", "file", "file"),
        Change("gone.txt", "deleted", "file", "file"),
        Change("new.txt", "added", "file"),
        Change("swap", "type_changed", "symlink", "file"),
    ]


def test_a_racy_file_is_rehashed_and_its_change_seen(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write(root, {"racy.txt": b"abc\n", "calm.txt": b"calm\n"})
    calm = root / "calm.txt"
    os.utime(calm, ns=(0, 1_000_000_000))
    # As if the baseline walk began within the timestamp tick racy.txt was written in.
    base = Baseline(_by_path(tree_manifest(root)), (root / "racy.txt").stat().st_mtime_ns)
    assert set(base.since()) == {"calm.txt"}
    # Rewritten within the same timestamp tick: size and mtime as in the baseline.
    mtime = (root / "racy.txt").stat().st_mtime_ns
    (root / "racy.txt").write_bytes(b"xyz\n")
    os.utime(root / "racy.txt", ns=(mtime, mtime))
    current = tree_manifest(root, since=base.since())
    assert {e.path: e.sha256 is None for e in current.entries} == {
        "calm.txt": True,
        "racy.txt": False,
    }
    assert diff.changes(base, current) == [Change("racy.txt", "modified", "file", "file")]


def _by_path(found: Manifest) -> dict[str, ManifestEntry]:
    return {e.path: e for e in found.entries}


def test_symlinks_compare_their_targets() -> None:
    base = baseline(entry("moved", "symlink", link="a"), entry("kept", "symlink", link="b"))
    current = manifest(
        entry("moved", "symlink", link="c"), entry("kept", "symlink", link="b", mtime=99)
    )
    assert diff.changes(base, current) == [Change("moved", "modified", "symlink", "symlink")]


def test_a_file_that_became_a_directory() -> None:
    base = baseline(entry("thing", data=b"text\n"))
    current = manifest(entry("thing", "directory"), entry("thing/inner.txt"))
    assert diff.changes(base, current) == [
        Change("thing", "type_changed", "directory", "file"),
        Change("thing/inner.txt", "added", "file"),
    ]


def test_directories_are_reported_only_when_empty_of_reported_entries() -> None:
    base = baseline(
        entry("kept", "directory", mtime=1),
        entry("kept/old.txt"),
        entry("emptied", "directory"),
        entry("emptied/old.txt"),
        entry("vanished", "directory"),
        entry("vanished/inner", "directory"),
    )
    current = manifest(
        entry("kept", "directory", mtime=2),  # a directory's own mtime means nothing
        entry("kept/old.txt", hashed=False),
        entry("emptied", "directory"),
        entry("fresh", "directory"),
        entry("fresh/file.txt"),
        entry("hollow", "directory"),
        entry("hollow/deeper", "directory"),
        entry("hollow/deeper/deepest", "directory"),
        entry("lonely", "directory"),
    )
    assert diff.changes(base, current) == [
        Change("emptied/old.txt", "deleted", "file", "file"),
        Change("fresh/file.txt", "added", "file"),
        Change("hollow/deeper/deepest", "added", "directory"),
        Change("lonely", "added", "directory"),
        Change("vanished/inner", "deleted", "directory", "directory"),
    ]


def test_a_directory_next_to_a_similar_name_is_still_reported() -> None:
    # "a b" sorts between "a" and "a/..."; only real descendants hide a directory.
    current = manifest(entry("a", "directory"), entry("a b"), entry("ab"))
    assert [c.path for c in diff.changes(baseline(), current)] == ["a", "a b", "ab"]


def test_other_entries_are_compared_by_type_only() -> None:
    base = baseline(entry("fifo", "other", size=0))
    current = manifest(entry("fifo", "other", size=0, mtime=77), entry("sock", "other"))
    assert diff.changes(base, current) == [Change("sock", "added", "other")]


def test_changes_refuses_a_truncated_manifest() -> None:
    with pytest.raises(GuestError, match="too many entries"):
        diff.changes(baseline(), manifest(entry("a"), truncated=True))


def test_no_changes_render_as_unchanged() -> None:
    base = baseline(entry("a.txt"))
    found = diff.changes(base, manifest(entry("a.txt", hashed=False)))
    assert found == []
    result = rendered(found, {}, {})
    assert result["changed"] is False
    assert result["patch"] == "" and result["entries"] == []
    assert set(result["summary"].values()) == {0}


# --- wanted_bytes -------------------------------------------------------------------------


def test_wanted_bytes_names_small_regular_files_on_each_side() -> None:
    base = baseline(
        entry("edited.txt", data=b"old", size=10),
        entry("gone.txt", size=MB),
        entry("huge.bin", size=MB + 1),
        entry("file_to_dir", size=3),
        entry("file_to_link", size=3),
        entry("dir_to_file", "directory"),
        entry("link", "symlink", link="a"),
    )
    current = manifest(
        entry("edited.txt", data=b"new", size=20),
        entry("huge.bin", size=5, data=b"small"),
        entry("added.txt", size=MB),
        entry("added_huge.txt", size=MB + 1),
        entry("file_to_dir", "directory"),
        entry("file_to_link", "symlink", link="x"),
        entry("dir_to_file", size=4),
        entry("link", "symlink", link="b"),
        entry("fifo", "other"),
    )
    found = diff.changes(base, current)
    from_baseline, from_guest = diff.wanted_bytes(found, base, current)
    assert from_baseline == ["edited.txt", "file_to_dir", "gone.txt"]
    assert from_guest == ["added.txt", "dir_to_file", "edited.txt", "huge.bin"]


# --- render -------------------------------------------------------------------------------


def test_a_modified_file_gets_git_hunks_with_three_lines_of_context() -> None:
    old = "".join(f"line {n}\n" for n in range(1, 21)).encode()
    new = old.replace(b"line 2\n", b"LINE 2\n").replace(b"line 17\n", b"")
    change = Change("f.txt", "modified", "file", "file")
    result = rendered([change], {"f.txt": old}, {"f.txt": new})
    blob = f"{diff._blob_id(old)}..{diff._blob_id(new)}"
    assert result["patch"] == (
        "diff --git a/f.txt b/f.txt\n"
        f"index {blob}\n"
        "--- a/f.txt\n"
        "+++ b/f.txt\n"
        "@@ -1,5 +1,5 @@\n"
        " line 1\n-line 2\n+LINE 2\n line 3\n line 4\n line 5\n"
        "@@ -14,7 +14,6 @@\n"
        " line 14\n line 15\n line 16\n-line 17\n line 18\n line 19\n line 20\n"
    )
    assert patch_of(result, "f.txt") == result["patch"]
    assert result["summary"] == {
        "total": 1,
        "added": 0,
        "modified": 1,
        "deleted": 0,
        "type_changed": 0,
        "text_patched": 1,
        "non_text": 0,
    }
    assert result["entries"][0]["path"] == "/workspace/f.txt"


def test_changes_closer_than_twice_the_context_share_a_hunk() -> None:
    old = "".join(f"{n}\n" for n in range(1, 13)).encode()
    new = old.replace(b"2\n", b"two\n", 1).replace(b"8\n", b"eight\n")
    result = rendered([Change("f", "modified", "file", "file")], {"f": old}, {"f": new})
    assert [line for line in result["patch"].splitlines() if line.startswith("@@")] == [
        "@@ -1,11 +1,11 @@"
    ]


def test_the_missing_final_newline_is_marked_on_each_side() -> None:
    cases = {
        "gained": (b"a\nb", b"a\nb\n", "-b\n\\ No newline at end of file\n+b\n"),
        "lost": (b"a\nb\n", b"a\nb", "-b\n+b\n\\ No newline at end of file\n"),
        "kept": (b"x\ny", b"X\ny", "-x\n+X\n y\n\\ No newline at end of file\n"),
    }
    for name, (old, new, body) in cases.items():
        change = Change(name, "modified", "file", "file")
        patch = patch_of(rendered([change], {name: old}, {name: new}), name)
        assert patch is not None and patch.endswith(body), name


def test_added_and_deleted_files_and_empty_ones() -> None:
    found = [
        Change("new.txt", "added", "file"),
        Change("new_empty", "added", "file"),
        Change("old.txt", "deleted", "file", "file"),
        Change("old_empty", "deleted", "file", "file"),
    ]
    old = {"old.txt": b"bye", "old_empty": b""}
    new = {"new.txt": b"hi\n", "new_empty": b""}
    result = rendered(found, old, new)
    null, empty = "0" * 40, diff._blob_id(b"")
    assert patch_of(result, "new.txt") == (
        "diff --git a/new.txt b/new.txt\nnew file mode 100644\n"
        f"index {null}..{diff._blob_id(b'hi\n')}\n"
        "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+hi\n"
    )
    assert patch_of(result, "new_empty") == (
        f"diff --git a/new_empty b/new_empty\nnew file mode 100644\nindex {null}..{empty}\n"
    )
    assert patch_of(result, "old.txt") == (
        "diff --git a/old.txt b/old.txt\ndeleted file mode 100644\n"
        f"index {diff._blob_id(b'bye')}..{null}\n"
        "--- a/old.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n\\ No newline at end of file\n"
    )
    assert patch_of(result, "old_empty") == (
        f"diff --git a/old_empty b/old_empty\ndeleted file mode 100644\nindex {empty}..{null}\n"
    )
    assert result["summary"]["text_patched"] == 4


def test_git_blob_ids_match_git() -> None:
    # `git hash-object` of "hi\n" and of an empty file.
    assert diff._blob_id(b"hi\n") == "45b983be36b73c0788dc9cbcb76cbb80fc7bb057"
    assert diff._blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


def test_names_are_written_the_way_git_writes_them() -> None:
    found = [
        Change("with space.txt", "added", "file"),
        Change('q"uote é\t.txt', "added", "file"),
    ]
    new = {"with space.txt": b"s\n", 'q"uote é\t.txt': b"q\n"}
    result = rendered(found, {}, new)
    spaced = patch_of(result, "with space.txt")
    quoted = patch_of(result, 'q"uote é\t.txt')
    assert spaced is not None and quoted is not None
    assert spaced.startswith("diff --git a/with space.txt b/with space.txt\n")
    assert "--- /dev/null\n+++ b/with space.txt\t\n" in spaced
    name = '"b/q\\"uote \\303\\251\\t.txt"'
    assert quoted.startswith(f'diff --git "a/q\\"uote \\303\\251\\t.txt" {name}\n')
    assert f"+++ {name}\t\n" in quoted  # the raw name holds a space
    parsed = pf.parse_patch(result["patch"])  # the guest's own reading of the headers
    assert [(p.parts, p.status) for p in parsed] == [
        (("with space.txt",), "added"),
        (('q"uote é\t.txt',), "added"),
    ]


def test_carriage_returns_stay_inside_their_lines() -> None:
    old, new = b"a\r\nb\rc\r\n", b"a\r\nB\rc\r\n"
    patch = patch_of(
        rendered([Change("w", "modified", "file", "file")], {"w": old}, {"w": new}), "w"
    )
    assert patch is not None and patch.endswith("@@ -1,2 +1,2 @@\n a\r\n-b\rc\r\n+B\rc\r\n")


@pytest.mark.parametrize(
    "data",
    [b"text\0with a NUL\n", b"caf\xe9 in latin-1\n", b"x\n" * (MB // 2) + b"x"],
    ids=["nul", "not-utf8", "too-big"],
)
def test_binary_invalid_utf8_and_big_files_get_no_patch(data: bytes) -> None:
    found = [Change("f", "modified", "file", "file"), Change("g", "added", "file")]
    result = rendered(found, {"f": b"text\n"}, {"f": data, "g": data})
    assert [item["text_patch"] for item in result["entries"]] == [None, None]
    assert result["summary"]["non_text"] == 2
    assert result["summary"]["text_patched"] == 0
    assert result["patch"] == ""


def test_unfetched_files_symlinks_and_others_are_non_text() -> None:
    found = [
        Change("unfetched.txt", "modified", "file", "file"),
        Change("link", "modified", "symlink", "symlink"),
        Change("was_link", "type_changed", "file", "symlink"),
        Change("fifo", "added", "other"),
        Change("empty_dir", "added", "directory"),
    ]
    result = rendered(found, {}, {"was_link": b"text\n"})
    assert all(item["text_patch"] is None for item in result["entries"])
    assert result["summary"]["non_text"] == 4  # the empty directory needs no content
    assert result["summary"]["total"] == 5
    assert result["changed"] is True


def test_type_changes_between_a_file_and_a_directory_patch_the_file_side() -> None:
    found = [
        Change("dir_now", "type_changed", "directory", "file"),
        Change("file_now", "type_changed", "file", "directory"),
    ]
    result = rendered(found, {"dir_now": b"old\n"}, {"file_now": b"new\n"})
    assert "deleted file mode 100644" in (patch_of(result, "dir_now") or "")
    assert "new file mode 100644" in (patch_of(result, "file_now") or "")
    assert result["summary"]["type_changed"] == 2
    assert result["summary"]["text_patched"] == 2


def test_patches_stop_at_the_bound_and_say_so() -> None:
    big = b"x" * 99 + b"\n"
    text = big * 10_000  # a patch of about 1 MB: eight fit in MAX_PATCH_BYTES, nine do not
    names = [f"f{n}.txt" for n in range(10)]
    found = [Change(name, "added", "file") for name in names]
    found.insert(9, Change("f8b.bin", "added", "file"))
    new = dict.fromkeys(names, text) | {"f8b.bin": b"\0"}
    result = rendered(found, {}, new)
    patched = [item["path"] for item in result["entries"] if item["text_patch"] is not None]
    assert patched == [f"/workspace/f{n}.txt" for n in range(8)]
    assert result["patch_truncated"] is True
    assert len(result["patch"].encode()) <= diff.MAX_PATCH_BYTES
    assert result["summary"]["text_patched"] == 8
    assert result["summary"]["non_text"] == 1  # the binary; cut text files count as neither
    assert result["summary"]["total"] == 11


# --- end to end: real trees, real git apply -----------------------------------------------

BASE_FILES = {
    "keep.txt": b"same\n",
    "mod.txt": b"".join(b"row %d\n" % n for n in range(1, 31)),
    "gone.txt": b"bye\n",
    "olddir/a.txt": b"a\n",
    "olddir/deeper/b.txt": b"b\n",
    "with space.txt": b"one\ntwo\n",
    "tail_gained.txt": b"a\nb",
    "tail_lost.txt": b"x\ny\n",
    "tail_kept.txt": b"p\nq\nr",
    "thing": b"a file that becomes a directory\n",
    "was_dir/x.txt": b"inside\n",
    "empty_gone": b"",
    "to_empty.txt": b"content\n",
    "from_empty.txt": b"",
    "crlf.txt": b"a\r\nb\r\n",
}


def modify(root: Path) -> None:
    (root / "mod.txt").write_bytes(
        BASE_FILES["mod.txt"].replace(b"row 3\n", b"ROW 3\n").replace(b"row 25\n", b"")
    )
    for rel in ("gone.txt", "empty_gone", "thing"):
        (root / rel).unlink()
    shutil.rmtree(root / "olddir")
    shutil.rmtree(root / "was_dir")
    write(
        root,
        {
            "with space.txt": b"one\n2\n",
            "tail_gained.txt": b"a\nb\nc\n",
            "tail_lost.txt": b"x\ny",
            "tail_kept.txt": b"P\nq\nr",
            "thing/inner.txt": b"now inside\n",
            "was_dir": b"a file where a directory was",
            "to_empty.txt": b"",
            "from_empty.txt": b"now\n",
            "crlf.txt": b"a\r\nB\r\n",
            "new.txt": b"brand new\n",
            "new_empty": b"",
            "newdir/sub/new file.txt": b"deep\n",
            'q"uote é.txt': b"quoted\n",
        },
    )


@pytest.mark.skipif(GIT is None, reason="needs git")
def test_the_patch_turns_a_copy_of_the_baseline_into_the_workspace(tmp_path: Path) -> None:
    base_dir, work_dir, copy_dir = tmp_path / "base", tmp_path / "work", tmp_path / "copy"
    write(base_dir, BASE_FILES)
    os.utime(base_dir / "keep.txt", ns=(0, 1_000_000_000))  # safely older than the walk
    base = diff.save_baseline(tmp_path / "baseline.json", tree_manifest(base_dir))
    shutil.copytree(base_dir, work_dir)  # copy2 keeps mtimes: unchanged files match since
    modify(work_dir)
    current = tree_manifest(work_dir, since=base.since())
    assert _by_path(current)["keep.txt"].sha256 is None

    found = diff.changes(diff.load_baseline(tmp_path / "baseline.json"), current)
    from_baseline, from_guest = diff.wanted_bytes(found, base, current)
    old = {rel: (base_dir / rel).read_bytes() for rel in from_baseline}
    new = {rel: (work_dir / rel).read_bytes() for rel in from_guest}
    result = rendered(found, old, new)

    assert result["summary"]["text_patched"] == result["summary"]["total"]
    assert result["summary"]["non_text"] == 0 and not result["patch_truncated"]
    statuses = {
        item["path"].removeprefix("/workspace/"): item["status"] for item in result["entries"]
    }
    assert statuses["thing"] == statuses["was_dir"] == "type_changed"
    assert statuses["olddir/deeper/b.txt"] == "deleted" and "olddir" not in statuses
    assert "keep.txt" not in statuses

    shutil.copytree(base_dir, copy_dir)
    git_apply(result["patch"], copy_dir, tmp_path)
    assert file_contents(copy_dir) == file_contents(work_dir)


@pytest.mark.skipif(GIT is None, reason="needs git")
def test_each_entry_patch_applies_on_its_own(tmp_path: Path) -> None:
    base_dir, work_dir = tmp_path / "base", tmp_path / "work"
    write(base_dir, {"a.txt": b"1\n2\n3", "b c.txt": b"x\n"})
    shutil.copytree(base_dir, work_dir)
    write(work_dir, {"a.txt": b"1\n2\n3\n4\n", "b c.txt": b"y\n"})
    base = Baseline(_by_path(tree_manifest(base_dir)), 0)
    found = diff.changes(base, tree_manifest(work_dir))
    old = {rel: (base_dir / rel).read_bytes() for rel in ("a.txt", "b c.txt")}
    new = {rel: (work_dir / rel).read_bytes() for rel in ("a.txt", "b c.txt")}
    for item in rendered(found, old, new)["entries"]:
        git_apply(item["text_patch"], base_dir, tmp_path)
    assert file_contents(base_dir) == file_contents(work_dir)


def random_text(rng: random.Random, lines: int) -> bytes:
    """Lines from a small alphabet, so that old and new share many (and repeat some)."""
    words = [b"alpha", b"beta", b"", b"gamma\r", b"delta delta", b"\xc3\xa9t\xc3\xa9"]
    text = b"\n".join(rng.choice(words) for _ in range(lines))
    return text + (b"\n" if rng.random() < 0.5 else b"")


@pytest.mark.skipif(GIT is None, reason="needs git")
def test_random_edits_apply_exactly(tmp_path: Path) -> None:
    rng = random.Random(20240601)
    base_dir, work_dir = tmp_path / "base", tmp_path / "work"
    for n in range(60):
        old = random_text(rng, rng.randrange(0, 40))
        lines = old.split(b"\n")
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(0, len(lines) + 1)
            if rng.random() < 0.5 and at < len(lines):
                del lines[at]
            else:
                lines.insert(at, random_text(rng, 1).rstrip(b"\n"))
        write(base_dir, {f"f{n}.txt": old})
        write(work_dir, {f"f{n}.txt": b"\n".join(lines)})
    base = Baseline(_by_path(tree_manifest(base_dir)), 0)
    current = tree_manifest(work_dir)
    found = diff.changes(base, current)
    from_baseline, from_guest = diff.wanted_bytes(found, base, current)
    old_bytes = {rel: (base_dir / rel).read_bytes() for rel in from_baseline}
    new_bytes = {rel: (work_dir / rel).read_bytes() for rel in from_guest}
    result = rendered(found, old_bytes, new_bytes)
    assert result["summary"]["text_patched"] == len(found) > 40
    git_apply(result["patch"], base_dir, tmp_path)
    assert file_contents(base_dir) == file_contents(work_dir)


def test_a_change_built_without_its_baseline_type() -> None:
    # Only type_changed needs baseline_type; without it the old side is not guessed at.
    found = [
        Change("m", "modified", "file"),
        Change("d", "deleted", "file"),
        Change("t", "type_changed", "file"),
    ]
    result = rendered(found, {"m": b"1\n", "d": b"2\n", "t": b"3\n"}, {"m": b"4\n", "t": b"5\n"})
    assert [item["text_patch"] is not None for item in result["entries"]] == [True, True, False]
    assert result["summary"]["non_text"] == 1
