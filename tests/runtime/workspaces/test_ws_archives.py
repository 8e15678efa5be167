"""Workspace archives on the host: seeds from directories and tar files, and guest exports.

Everything runs on real files in tmp_path with real tar archives; no VM is involved.
"""

from __future__ import annotations

import gzip
import io
import os
import socket
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_mcp.errors import ConflictError, GuestError, InvalidArgumentError, NotFoundError
from pyro_mcp.runtime.workspaces import archives

Member = tuple[tarfile.TarInfo, bytes | None]


def member(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, 1_700_000_000
    return info


def tar_bytes(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


def write_tar(path: Path, members: list[Member]) -> Path:
    data = tar_bytes(members)
    if path.name.lower().endswith(("gz", "tgz")):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def read_tar(path: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """name -> (kind, permission bits, file bytes or link target)."""
    out: dict[str, tuple[str, int, bytes | str]] = {}
    with tarfile.open(path, mode="r:") as tar:  # plain: prepare_archive never compresses
        for info in tar:
            if info.isreg():
                handle = tar.extractfile(info)
                assert handle is not None
                out[info.name] = ("file", info.mode, handle.read())
            elif info.isdir():
                out[info.name] = ("dir", info.mode, b"")
            else:
                out[info.name] = ("symlink" if info.issym() else "hardlink", 0, info.linkname)
    return out


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """Where seeds are written: holds nothing else, so leftovers show."""
    path = tmp_path / "out"
    path.mkdir()
    return path


def build_tree(top: Path) -> None:
    (top / "src/pkg").mkdir(parents=True)
    (top / "src/pkg/mod.py").write_text("print('hi')\n")
    (top / "run.sh").write_text("#!/bin/sh\n")
    (top / "run.sh").chmod(0o4755)  # setuid is dropped
    (top / "empty").mkdir()
    (top / "empty").chmod(0o700)
    (top / "src/link").symlink_to("pkg/mod.py")
    (top / "dirlink").symlink_to("src")
    os.link(top / "run.sh", top / "src/run-again.sh")


# --- seeds from directories ------------------------------------------------------------------


def test_directory_seed_keeps_content_modes_and_links(tmp_path: Path, out_dir: Path) -> None:
    build_tree(tmp_path / "project")
    out = out_dir / "seed.tar"
    seed = archives.prepare_archive(tmp_path / "project", out)
    assert seed == archives.SeedArchive(
        mode="directory",
        source_path=str((tmp_path / "project").resolve()),
        entry_count=8,
        bytes=len("print('hi')\n#!/bin/sh\n"),
    )
    assert read_tar(out) == {
        "dirlink": ("symlink", 0, "src"),
        "empty": ("dir", 0o700, b""),
        "run.sh": ("file", 0o755, b"#!/bin/sh\n"),
        "src": ("dir", 0o755, b""),
        "src/link": ("symlink", 0, "pkg/mod.py"),
        "src/pkg": ("dir", 0o755, b""),
        "src/run-again.sh": ("hardlink", 0, "run.sh"),
        "src/pkg/mod.py": ("file", 0o644, b"print('hi')\n"),
    }
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert {(m.uid, m.gid, m.uname, m.gname) for m in tar} == {(0, 0, "", "")}
    assert names.index("src") < names.index("src/pkg") < names.index("src/pkg/mod.py")
    assert len(names) == 8 and os.listdir(out_dir) == ["seed.tar"]


def test_directory_seed_is_deterministic(tmp_path: Path, out_dir: Path) -> None:
    build_tree(tmp_path / "project")
    archives.prepare_archive(tmp_path / "project", out_dir / "a.tar")
    archives.prepare_archive(str(tmp_path / "project"), out_dir / "b.tar")
    assert (out_dir / "a.tar").read_bytes() == (out_dir / "b.tar").read_bytes()


def test_empty_seed(out_dir: Path) -> None:
    out = out_dir / "nested/seed.tar"
    assert archives.prepare_archive(None, out) == archives.SeedArchive("empty", None, 0, 0)
    assert read_tar(out) == {}


def test_empty_directory_seed_and_overwrite(tmp_path: Path, out_dir: Path) -> None:
    (tmp_path / "nothing").mkdir()
    (out_dir / "seed.tar").write_text("an older seed")
    seed = archives.prepare_archive(tmp_path / "nothing", out_dir / "seed.tar")
    assert (seed.mode, seed.entry_count, seed.bytes) == ("directory", 0, 0)
    assert read_tar(out_dir / "seed.tar") == {}


def assert_refused_cleanly(out_dir: Path) -> None:
    assert os.listdir(out_dir) == []  # neither the seed nor a temporary file


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    top = tmp_path / "tree"
    (top / "sub").mkdir(parents=True)
    (top / "sub/ok.txt").write_text("ok")
    return top


def test_directory_with_a_fifo_is_refused(tree: Path, out_dir: Path) -> None:
    os.mkfifo(tree / "sub/pipe")
    with pytest.raises(InvalidArgumentError, match=r"sub/pipe, which is a FIFO; remove it"):
        archives.prepare_archive(tree, out_dir / "seed.tar")
    assert_refused_cleanly(out_dir)


def test_directory_with_a_socket_is_refused(
    tree: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tree / "sub")  # a socket's path must be short
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
        with pytest.raises(InvalidArgumentError, match=r"sock, which is a socket.*tar archive"):
            archives.prepare_archive(tree, out_dir / "seed.tar")
    assert_refused_cleanly(out_dir)


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "../.."])
def test_directory_with_an_escaping_symlink_is_refused(
    tree: Path, out_dir: Path, target: str
) -> None:
    (tree / "sub/link").symlink_to(target)
    with pytest.raises(InvalidArgumentError, match=r"symlink sub/link"):
        archives.prepare_archive(tree, out_dir / "seed.tar")
    assert_refused_cleanly(out_dir)


def test_unreadable_file_is_refused(tree: Path, out_dir: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    (tree / "sub/ok.txt").chmod(0)
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        archives.prepare_archive(tree, out_dir / "seed.tar")
    assert_refused_cleanly(out_dir)


def test_missing_seed_path(tmp_path: Path, out_dir: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        archives.prepare_archive(tmp_path / "missing", out_dir / "seed.tar")
    assert_refused_cleanly(out_dir)


@pytest.mark.parametrize("name", ["seed.zip", "seed.tar.xz", "tar"])
def test_other_files_are_refused(tmp_path: Path, out_dir: Path, name: str) -> None:
    (tmp_path / name).write_bytes(tar_bytes([(member("a"), b"a")]))
    with pytest.raises(InvalidArgumentError, match=r"\.tar, \.tar\.gz or \.tgz"):
        archives.prepare_archive(tmp_path / name, out_dir / "seed.tar")
    assert_refused_cleanly(out_dir)


# --- seeds from tar files ---------------------------------------------------------------------

GOOD: list[Member] = [
    (member("./", tarfile.DIRTYPE, mode=0o755), None),
    (member("./bin", tarfile.DIRTYPE, mode=0o2755), None),
    (member("./pkg/tool.js", mode=0o4755), b"tool"),
    (member("./bin/tool", tarfile.SYMTYPE, "../pkg/tool.js", mode=0o777), None),
    (member("bin//tool2", tarfile.LNKTYPE, "./pkg/tool.js"), None),
    (member("README"), b"read me\n"),
]


@pytest.mark.parametrize("name", ["seed.tar", "seed.tar.gz", "seed.tgz", "SEED.TGZ"])
def test_tar_seed_is_checked_and_normalised(tmp_path: Path, out_dir: Path, name: str) -> None:
    source = write_tar(tmp_path / name, GOOD)
    seed = archives.prepare_archive(source, out_dir / "seed.tar")
    assert seed == archives.SeedArchive("tar_archive", str(source), 5, len(b"toolread me\n"))
    assert read_tar(out_dir / "seed.tar") == {
        "bin": ("dir", 0o755, b""),
        "pkg/tool.js": ("file", 0o755, b"tool"),
        "bin/tool": ("symlink", 0, "../pkg/tool.js"),
        "bin/tool2": ("hardlink", 0, "pkg/tool.js"),
        "README": ("file", 0o644, b"read me\n"),
    }
    assert os.listdir(out_dir) == ["seed.tar"]


def test_tar_seed_through_a_symlink_keeps_the_resolved_path(tmp_path: Path, out_dir: Path) -> None:
    blob = write_tar(tmp_path / "blob.tar", GOOD)
    (tmp_path / "link.tar").symlink_to(blob)
    seed = archives.prepare_archive(tmp_path / "link.tar", out_dir / "seed.tar")
    assert seed.source_path == str(blob) and seed.entry_count == 5


def chr_device() -> tarfile.TarInfo:
    info = member("dev/null-copy", tarfile.CHRTYPE)
    info.devmajor, info.devminor = 1, 3
    return info


OK: Member = (member("good.txt"), b"good")
BAD_TARS: dict[str, tuple[list[Member], str]] = {
    "absolute name": ([OK, (member("/etc/evil"), b"x")], "absolute name"),
    "dot-dot name": ([OK, (member("a/../../evil"), b"x")], "climbs out"),
    "absolute symlink": ([OK, (member("l", tarfile.SYMTYPE, "/etc/passwd"), None)], "relative"),
    "symlink climbing out": ([(member("a/l", tarfile.SYMTYPE, "../../x"), None)], "leads out"),
    "symlink chain out": (
        [
            (member("sub", tarfile.DIRTYPE, mode=0o755), None),
            (member("sub/up", tarfile.SYMTYPE, ".."), None),
            (member("l", tarfile.SYMTYPE, "sub/up/sub/up/.."), None),
        ],
        "symlink l .*leads out",
    ),
    "device node": ([OK, (chr_device(), None)], "device node"),
    "fifo": ([OK, (member("fifo", tarfile.FIFOTYPE), None)], "FIFO"),
    "hard link out": ([OK, (member("h", tarfile.LNKTYPE, "../secret"), None)], "hard link h"),
    "hard link absolute": ([OK, (member("h", tarfile.LNKTYPE, "/etc/passwd"), None)], "hard"),
    "hard link to a later member": (
        [(member("h", tarfile.LNKTYPE, "good.txt"), None), OK],
        "earlier in the archive",
    ),
    "hard link to a directory": (
        [(member("d", tarfile.DIRTYPE), None), (member("h", tarfile.LNKTYPE, "d"), None)],
        "regular file",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TARS))
@pytest.mark.parametrize("suffix", [".tar", ".tgz"])
def test_bad_tar_seeds_are_refused(tmp_path: Path, out_dir: Path, case: str, suffix: str) -> None:
    members, message = BAD_TARS[case]
    source = write_tar(tmp_path / f"bad{suffix}", members)
    with pytest.raises(InvalidArgumentError, match=message):
        archives.prepare_archive(source, out_dir / "seed.tar")
    assert_refused_cleanly(out_dir)


def truncated_gzip() -> bytes:
    data = gzip.compress(tar_bytes([(member(f"f{i}"), os.urandom(5000)) for i in range(20)]))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data",
    [b"", b"not a tar at all" * 100, b"\x1f\x8b\x08broken gzip" * 10, truncated_gzip()],
    ids=["empty", "garbage", "broken gzip", "truncated gzip"],
)
def test_corrupt_tar_seeds_are_refused(tmp_path: Path, out_dir: Path, data: bytes) -> None:
    (tmp_path / "bad.tar.gz").write_bytes(data)
    with pytest.raises(InvalidArgumentError, match="cannot be read"):
        archives.prepare_archive(tmp_path / "bad.tar.gz", out_dir / "seed.tar")
    assert_refused_cleanly(out_dir)


def test_truncated_plain_tar_is_refused(tmp_path: Path, out_dir: Path) -> None:
    data = tar_bytes([(member("a"), b"a" * 100), (member("big"), os.urandom(100_000))])
    (tmp_path / "cut.tar").write_bytes(data[: 512 * 3 + 40_000])  # inside big's data
    with pytest.raises(InvalidArgumentError, match="cannot be read: unexpected end of data"):
        archives.prepare_archive(tmp_path / "cut.tar", out_dir / "seed.tar")
    assert_refused_cleanly(out_dir)


@pytest.mark.parametrize("change", ["shrink", "grow", "replace with a link"])
def test_file_changed_after_the_scan_is_refused(tree: Path, out_dir: Path, change: str) -> None:
    # The scan fixes each file's size in the checks and the header; the copy must match it.
    entries = archives._scan_directory(tree)
    victim = tree / "sub/ok.txt"
    if change == "replace with a link":
        victim.unlink()
        victim.symlink_to("elsewhere")
    else:
        victim.write_text("" if change == "shrink" else "much longer")
    with pytest.raises(ConflictError, match=r"sub/ok.txt changed while the seed was being made"):
        archives._write_atomically(
            out_dir / "seed.tar", lambda tar: archives._write_entries(tar, entries)
        )
    assert_refused_cleanly(out_dir)


# --- read_members -----------------------------------------------------------------------------


def test_read_members_returns_small_requested_files(tmp_path: Path, out_dir: Path) -> None:
    build_tree(tmp_path / "project")
    (tmp_path / "project/big").write_bytes(b"x" * 100)
    out = out_dir / "seed.tar"
    archives.prepare_archive(tmp_path / "project", out)
    wanted = ["run.sh", "src/pkg/mod.py", "src/run-again.sh", "big", "src", "src/link", "nope"]
    assert archives.read_members(out, wanted, limit=50) == {
        "run.sh": b"#!/bin/sh\n",
        "src/pkg/mod.py": b"print('hi')\n",
        "src/run-again.sh": b"#!/bin/sh\n",  # a hard link holds its file's bytes
    }
    assert archives.read_members(out, ["big"], limit=100) == {"big": b"x" * 100}
    assert archives.read_members(out, [], limit=100) == {}


# --- exports ----------------------------------------------------------------------------------


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """The export's parent directory: holds nothing else, so leftover staging shows."""
    path = tmp_path / "dest"
    path.mkdir()
    return path


def guest_tar(tmp_path: Path, members: list[Member]) -> Path:
    return write_tar(tmp_path / "from-guest.tar", members)


def test_export_directory(tmp_path: Path, dest: Path) -> None:
    stream = guest_tar(
        tmp_path,
        [
            (member("src", tarfile.DIRTYPE, mode=0o755), None),
            (member("src/a.py", mode=0o755), b"a = 1\n"),
            (member("src/link", tarfile.SYMTYPE, "a.py"), None),
            (member("empty", tarfile.DIRTYPE, mode=0o700), None),
            (member("top.txt", mode=0o4644), b"top"),
        ],
    )
    output = dest / "new/project"
    done = archives.extract_export(stream, output, "directory")
    assert done == archives.Exported("directory", 5, len(b"a = 1\ntop"))
    assert (output / "src/a.py").read_text() == "a = 1\n"
    assert os.readlink(output / "src/link") == "a.py" and (output / "empty").is_dir()
    assert stat.S_IMODE((output / "src/a.py").stat().st_mode) == 0o755
    assert stat.S_IMODE((output / "top.txt").stat().st_mode) == 0o644  # no setuid
    assert os.listdir(dest) == ["new"] and os.listdir(dest / "new") == ["project"]


def test_export_empty_directory(tmp_path: Path, dest: Path) -> None:
    done = archives.extract_export(guest_tar(tmp_path, []), dest / "d", "directory")
    assert done == archives.Exported("directory", 0, 0)
    assert os.listdir(dest / "d") == []


def test_export_file(tmp_path: Path, dest: Path) -> None:
    stream = guest_tar(tmp_path, [(member("run.sh", mode=0o755), b"#!/bin/sh\n")])
    done = archives.extract_export(stream, dest / "copy.sh", "file")
    assert done == archives.Exported("file", 1, 10)
    assert (dest / "copy.sh").read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE((dest / "copy.sh").stat().st_mode) == 0o755
    assert os.listdir(dest) == ["copy.sh"]


def test_export_redacts_secrets_from_every_regular_file(tmp_path: Path, dest: Path) -> None:
    from pyro_mcp.protocol.redaction import MARKER, Redactor

    value = b"tok-Zq8xV3pL2mN7"
    big = b"x" * (3 << 20) + value + b"y"  # across the 1 MiB read chunks
    stream = guest_tar(
        tmp_path,
        [
            (member("d", tarfile.DIRTYPE, mode=0o755), None),
            (member("d/cfg", mode=0o600), b"url=https://u:" + value + b"@host\n"),
            (member("big.bin"), big),
            (member("plain"), b"nothing here"),
        ],
    )
    done = archives.extract_export(stream, dest / "out", "directory", Redactor([value]))
    assert (dest / "out/d/cfg").read_bytes() == b"url=https://u:" + MARKER + b"@host\n"
    assert stat.S_IMODE((dest / "out/d/cfg").stat().st_mode) == 0o600
    assert (dest / "out/big.bin").read_bytes() == b"x" * (3 << 20) + MARKER + b"y"
    assert (dest / "out/plain").read_bytes() == b"nothing here"
    assert done.entry_count == 4
    assert sorted(os.listdir(dest / "out")) == ["big.bin", "d", "plain"]  # no leftovers


@pytest.mark.parametrize("target", ["plain", "sub/../plain"])
def test_export_symlink_keeps_its_target(tmp_path: Path, dest: Path, target: str) -> None:
    stream = guest_tar(tmp_path, [(member("python", tarfile.SYMTYPE, target), None)])
    done = archives.extract_export(stream, dest / "py", "symlink")
    assert done == archives.Exported("symlink", 1, 0)
    assert os.readlink(dest / "py") == target and os.listdir(dest) == ["py"]


@pytest.mark.parametrize("target", ["/usr/bin/python3", "../elsewhere"])
def test_export_of_a_symlink_leading_out_is_refused(
    tmp_path: Path, dest: Path, target: str
) -> None:
    stream = guest_tar(tmp_path, [(member("python", tarfile.SYMTYPE, target), None)])
    with pytest.raises(InvalidArgumentError, match=r"leads out|must be relative"):
        archives.extract_export(stream, dest / "py", "symlink")
    assert os.listdir(dest) == []


def existing_file(path: Path) -> None:
    path.write_text("mine")


def existing_dir(path: Path) -> None:
    path.mkdir()


def dangling_link(path: Path) -> None:
    path.symlink_to("missing-target")


@pytest.mark.parametrize("make", [existing_file, existing_dir, dangling_link])
def test_an_existing_output_is_refused_before_anything(dest: Path, make: object) -> None:
    output = dest / "taken"
    make(output)  # type: ignore[operator]
    before = os.readlink(output) if output.is_symlink() else None
    with pytest.raises(ConflictError, match=r"output_path already exists: .*choose a new path"):
        archives.check_output_free(output)
    # The tar does not exist: the refusal comes before it is looked at.
    with pytest.raises(ConflictError):
        archives.extract_export(dest / "no-such.tar", output, "directory")
    assert os.listdir(dest) == ["taken"]
    assert before is None or os.readlink(output) == before


def test_check_output_free_resolves_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert archives.check_output_free("~/a/../b") == tmp_path / "b"
    monkeypatch.chdir(tmp_path)
    assert archives.check_output_free("rel") == tmp_path / "rel"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        archives.check_output_free(tmp_path / "file/below/out")


HOSTILE: dict[str, list[Member]] = {
    "file through an escaping symlink": [
        (member("esc", tarfile.SYMTYPE, "../../outside"), None),
        (member("esc/pwned"), b"pwned"),
    ],
    "escaping symlink then a file": [
        (member("esc", tarfile.SYMTYPE, "../../outside"), None),
        (member("ok"), b"ok"),
    ],
    "absolute name": [(member("ok"), b"ok"), (member("/tmp/pwned"), b"pwned")],
    "dot-dot name": [(member("../pwned"), b"pwned")],
    "absolute symlink": [(member("etc", tarfile.SYMTYPE, "/etc"), None)],
    "device node": [(chr_device(), None)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_export_is_refused(tmp_path: Path, dest: Path, case: str) -> None:
    (tmp_path / "outside").mkdir()
    stream = guest_tar(tmp_path, HOSTILE[case])
    with pytest.raises(InvalidArgumentError):
        archives.extract_export(stream, dest / "out", "directory")
    assert os.listdir(dest) == [] and os.listdir(tmp_path / "outside") == []


UNEXPECTED: dict[str, tuple[str, list[Member]]] = {
    "two members for a file": ("file", [OK, (member("other"), b"x")]),
    "no member for a file": ("file", []),
    "a path for a file": ("file", [(member("a/b"), b"x")]),
    "a directory for a file": ("file", [(member("d", tarfile.DIRTYPE), None)]),
    "a file for a symlink": ("symlink", [OK]),
    "a dot-dot symlink": ("symlink", [(member("..", tarfile.SYMTYPE, "x"), None)]),
    "an unknown artifact type": ("socket", [OK]),
}


@pytest.mark.parametrize("case", sorted(UNEXPECTED))
def test_unexpected_guest_archives(tmp_path: Path, dest: Path, case: str) -> None:
    artifact_type, members = UNEXPECTED[case]
    stream = guest_tar(tmp_path, members)
    with pytest.raises(GuestError, match="unexpected archive from the guest"):
        archives.extract_export(stream, dest / "out", artifact_type)
    assert os.listdir(dest) == []


def test_export_that_is_not_a_tar(tmp_path: Path, dest: Path) -> None:
    (tmp_path / "junk.tar").write_bytes(b"junk" * 300)
    with pytest.raises(GuestError, match="unexpected archive"):
        archives.extract_export(tmp_path / "junk.tar", dest / "out", "directory")
    assert os.listdir(dest) == []


# --- the no-replace rename --------------------------------------------------------------------


@pytest.fixture(params=["renameat2", "fallback"])
def rename_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "fallback":
        monkeypatch.setattr(archives, "_renameat2", lambda: None)
    elif archives._renameat2() is None:
        pytest.skip("this libc has no renameat2")
    yield request.param


def make_sources(top: Path) -> dict[str, Path]:
    top.mkdir()
    (top / "file").write_text("new file")
    (top / "dir").mkdir()
    (top / "dir/inner").write_text("new dir")
    (top / "link").symlink_to("new link")
    return {name: top / name for name in ("file", "dir", "link")}


@pytest.mark.parametrize("kind", ["file", "dir", "link"])
def test_place_moves_into_a_free_path(tmp_path: Path, rename_path: str, kind: str) -> None:
    src = make_sources(tmp_path / "staging")[kind]
    archives.place(src, tmp_path / "out")
    assert not os.path.lexists(src)
    if kind == "file":
        assert (tmp_path / "out").read_text() == "new file"
    elif kind == "dir":
        assert (tmp_path / "out/inner").read_text() == "new dir"
    else:
        assert os.readlink(tmp_path / "out") == "new link"


@pytest.mark.parametrize("kind", ["file", "dir", "link"])
@pytest.mark.parametrize("there", [existing_file, existing_dir, dangling_link])
def test_place_never_replaces_what_appeared(
    tmp_path: Path, rename_path: str, kind: str, there: object
) -> None:
    src = make_sources(tmp_path / "staging")[kind]
    output = tmp_path / "out"
    there(output)  # type: ignore[operator]
    before = sorted(os.listdir(output)) if output.is_dir() and not output.is_symlink() else None
    with pytest.raises(ConflictError, match="output_path already exists"):
        archives.place(src, output)
    assert os.path.lexists(src)
    if there is existing_file:
        assert output.read_text() == "mine"
    elif there is existing_dir:
        assert before == [] and os.listdir(output) == []
    else:
        assert os.readlink(output) == "missing-target"


def test_a_short_source_read_is_the_source_fault() -> None:
    # A file truncated mid-copy must fail as the source's fault, not as a short tar.
    reader = archives._Reader(io.BytesIO(b"abc"), 5, lambda why: ConflictError(why))
    assert reader.read(2) == b"ab"
    with pytest.raises(ConflictError, match="ended early"):
        reader.read(3)
