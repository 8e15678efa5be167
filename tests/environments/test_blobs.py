"""The content-addressed blob store: add, verify, the stamp fast path, corruption and loss."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from pyro_mcp.environments import blobs
from pyro_mcp.environments.blobs import BlobStore, remove_tree, sha256_file
from pyro_mcp.errors import IntegrityError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def staged(tmp_path: Path, data: bytes, name: str = "artefact") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def flip_byte(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = os.urandom(blobs._CHUNK * 2 + 17)
    assert sha256_file(staged(tmp_path, data)) == sha(data)


def test_add_moves_the_file_under_its_digest_read_only(store: BlobStore, tmp_path: Path) -> None:
    data = b"kernel bytes"
    source = staged(tmp_path, data)
    digest, size = store.add(source)
    assert (digest, size) == (sha(data), len(data))
    assert not source.exists()
    target = store.path(digest)
    assert target == tmp_path / "blobs" / "sha256" / digest
    assert target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    assert store.has(digest)
    assert store.digests() == [digest]
    assert store.size(digest) == len(data)


def test_adding_the_same_bytes_twice_keeps_one_blob(store: BlobStore, tmp_path: Path) -> None:
    first = store.add(staged(tmp_path, b"same", "a"))
    second_source = staged(tmp_path, b"same", "b")
    assert store.add(second_source) == first
    assert not second_source.exists()
    assert store.digests() == [first[0]]


def test_add_replaces_a_corrupt_blob_with_the_good_bytes(store: BlobStore, tmp_path: Path) -> None:
    digest, _ = store.add(staged(tmp_path, b"good bytes", "a"))
    flip_byte(store.path(digest), 0)
    store.add(staged(tmp_path, b"good bytes", "b"))
    assert store.path(digest).read_bytes() == b"good bytes"
    assert store.verify(digest) == store.path(digest)


def test_verify_returns_the_path_of_a_good_blob(store: BlobStore, tmp_path: Path) -> None:
    digest, _ = store.add(staged(tmp_path, b"rootfs"))
    assert store.verify(digest) == store.path(digest)


def test_verify_trusts_a_matching_stamp_without_hashing(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest, _ = store.add(staged(tmp_path, b"stamped"))

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} was hashed although its stamp matches")

    monkeypatch.setattr(store, "_digest", no_hashing)
    assert store.verify(digest) == store.path(digest)


def test_verify_rehashes_when_the_stamp_is_missing_and_writes_a_new_one(
    store: BlobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest, _ = store.add(staged(tmp_path, b"no stamp"))
    stamp = store.root / "stamps" / digest
    stamp.unlink()
    calls: list[Path] = []
    real = blobs.sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(store, "_digest", counting)
    store.verify(digest)
    assert calls == [store.path(digest)]
    assert stamp.is_file()
    store.verify(digest)
    assert len(calls) == 1  # the fresh stamp spares the second hash


def test_a_garbage_stamp_is_ignored(store: BlobStore, tmp_path: Path) -> None:
    digest, _ = store.add(staged(tmp_path, b"data"))
    (store.root / "stamps" / digest).write_text("not json{")
    assert store.verify(digest) == store.path(digest)
    assert json.loads((store.root / "stamps" / digest).read_text())[1] == len(b"data")


@pytest.mark.parametrize("offset", [0, 4095, 9999])
def test_a_corrupted_byte_is_caught_by_the_digest(
    store: BlobStore, tmp_path: Path, offset: int
) -> None:
    data = os.urandom(10000)
    digest, _ = store.add(staged(tmp_path, data))
    store.verify(digest)  # stamped as good first: the stamp must not hide the change
    flip_byte(store.path(digest), offset)
    corrupted = store.path(digest).read_bytes()
    with pytest.raises(IntegrityError) as caught:
        store.verify(digest)
    error = caught.value
    text = str(error)
    assert digest in text
    assert sha(corrupted) in text
    assert "pyro env pull" in text
    assert error.details == {"digest": digest, "actual": sha(corrupted)}
    # Still corrupt on a second look: a failed check never stamps the file as good.
    with pytest.raises(IntegrityError):
        store.verify(digest)


def test_a_same_size_rewrite_is_caught_too(store: BlobStore, tmp_path: Path) -> None:
    digest, _ = store.add(staged(tmp_path, b"AAAA"))
    target = store.path(digest)
    os.chmod(target, 0o644)
    target.write_bytes(b"BBBB")
    with pytest.raises(IntegrityError):
        store.verify(digest)


def test_a_missing_blob_is_an_integrity_error(store: BlobStore) -> None:
    digest = sha(b"never stored")
    with pytest.raises(IntegrityError) as caught:
        store.verify(digest)
    assert "missing" in str(caught.value)
    assert digest[:12] in str(caught.value)
    assert caught.value.details == {"digest": digest}
    assert not store.has(digest)


def test_discard_removes_blob_and_stamp(store: BlobStore, tmp_path: Path) -> None:
    digest, _ = store.add(staged(tmp_path, b"bye"))
    store.discard(digest)
    assert not store.path(digest).exists()
    assert not (store.root / "stamps" / digest).exists()
    assert store.digests() == []
    store.discard(digest)  # twice is fine


def test_digests_ignores_strays(store: BlobStore, tmp_path: Path) -> None:
    assert store.digests() == []
    digest, _ = store.add(staged(tmp_path, b"x"))
    (store.dir / "partial.tmp").write_bytes(b"")
    (store.dir / ("0" * 64)).mkdir()
    assert store.digests() == [digest]


def test_remove_tree_deletes_read_only_trees_and_files(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("x")
    os.chmod(tree / "sub" / "f", 0o444)
    remove_tree(tree)
    assert not tree.exists()
    single = tmp_path / "single"
    single.write_text("x")
    remove_tree(single)
    assert not single.exists()
    remove_tree(tmp_path / "absent")


def test_remove_tree_does_not_follow_a_symlink(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "file").write_text("precious")
    link = tmp_path / "link"
    link.symlink_to(keep)
    remove_tree(link)
    assert not link.exists()
    assert (keep / "file").read_text() == "precious"


# --- sparse_sha256: the digest of guest RAM and disk images ----------------------------------
#
# What it promises (decided here): the digest covers the file's size, where its data extents
# lie and every byte in them, while holes are skipped unread. So files with equal bytes *and*
# equal holes hash equal, and any change to the bytes changes the digest (a hole reads as
# zeros, so writing into one, even zeros, adds an extent and changes it too). The layout is
# part of the digest: punching a hole where there were zeros also changes it, although the
# bytes read the same. That is safe (never a false "verified"), and the blob store never
# changes a layout (add renames, verify reads); a copy that does (cp --sparse, another file
# system) makes verify report the blob as corrupt and the snapshot is rebuilt.

MIB = 1 << 20
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def holes_supported(directory: Path) -> bool:
    probe = directory / "hole-probe"
    with probe.open("wb") as handle:
        handle.truncate(MIB)
        handle.seek(MIB - 1)
        handle.write(b"x")
    with probe.open("rb") as handle:
        first_data = os.lseek(handle.fileno(), 0, os.SEEK_DATA)
    probe.unlink()
    return first_data > 0


@pytest.fixture
def sparse_dir(tmp_path: Path) -> Path:
    if not holes_supported(tmp_path):
        pytest.skip(f"the file system of {tmp_path} does not report holes")
    return tmp_path


WRITES = ((0, b"head"), (3 * MIB + 17, b"middle" * 1000), (8 * MIB - 4, b"tail"))


def sparse_file(
    path: Path, size: int = 8 * MIB, writes: tuple[tuple[int, bytes], ...] = WRITES
) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset, data in writes:
            handle.seek(offset)
            handle.write(data)
    return path


def data_extents(path: Path) -> list[tuple[int, int]]:
    extents = []
    with path.open("rb") as handle:
        fd, size, offset = handle.fileno(), os.fstat(handle.fileno()).st_size, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            offset = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, offset))
    return extents


def punch_hole(path: Path, offset: int, length: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    with path.open("r+b") as handle:
        flags = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if libc.fallocate(handle.fileno(), flags, offset, length) != 0:
            pytest.skip(f"cannot punch holes here: {os.strerror(ctypes.get_errno())}")


def write_at(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def test_sparse_files_with_equal_bytes_and_holes_hash_equal(sparse_dir: Path) -> None:
    first = sparse_file(sparse_dir / "a")
    second = sparse_file(sparse_dir / "b")
    assert len(data_extents(first)) == 3  # really sparse: three islands of data
    assert first.read_bytes() == second.read_bytes()
    assert blobs.sparse_sha256(first) == blobs.sparse_sha256(second)
    assert blobs.sparse_sha256(first) == blobs.sparse_sha256(first)  # and deterministic


@pytest.mark.parametrize(
    "offset",
    [0, 3, 3 * MIB + 17, 3 * MIB + 3000, 8 * MIB - 1, 1 * MIB, 5 * MIB + 12345],
    ids=["first", "head", "middle-start", "middle", "last", "hole", "hole-unaligned"],
)
def test_sparse_sha256_changes_with_any_byte(sparse_dir: Path, offset: int) -> None:
    path = sparse_file(sparse_dir / "image")
    before = blobs.sparse_sha256(path)
    old = path.read_bytes()[offset]
    write_at(path, offset, bytes([old ^ 0x01]))
    assert blobs.sparse_sha256(path) != before


def test_sparse_sha256_changes_with_the_size_alone(sparse_dir: Path) -> None:
    path = sparse_file(sparse_dir / "image")
    before = blobs.sparse_sha256(path)
    with path.open("r+b") as handle:
        handle.truncate(9 * MIB)  # one more MiB of hole
    assert blobs.sparse_sha256(path) != before
    empty, hole = sparse_dir / "empty", sparse_dir / "hole"
    empty.write_bytes(b"")
    sparse_file(hole, MIB, ())
    assert data_extents(hole) == []
    digests = {blobs.sparse_sha256(p) for p in (empty, hole)}
    sparse_file(hole, 2 * MIB, ())
    digests.add(blobs.sparse_sha256(hole))
    assert len(digests) == 3


def test_sparse_sha256_tells_the_same_bytes_at_another_offset_apart(sparse_dir: Path) -> None:
    here = sparse_file(sparse_dir / "a", 4 * MIB, ((MIB, b"data"),))
    there = sparse_file(sparse_dir / "b", 4 * MIB, ((2 * MIB, b"data"),))
    assert blobs.sparse_sha256(here) != blobs.sparse_sha256(there)


def test_writing_zeros_into_a_hole_changes_the_digest(sparse_dir: Path) -> None:
    """The bytes read the same, but the layout is part of the digest (see above)."""
    path = sparse_file(sparse_dir / "image")
    before, content = blobs.sparse_sha256(path), path.read_bytes()
    write_at(path, 6 * MIB, bytes(4096))
    assert path.read_bytes() == content
    assert blobs.sparse_sha256(path) != before


def test_punching_a_hole_where_there_were_zeros_changes_the_digest(sparse_dir: Path) -> None:
    """Decided: the digest is of the bytes *and* the holes; a hole punched over zeros is a
    new layout, so a new digest, although every byte reads the same."""
    path = sparse_file(sparse_dir / "image", 4 * MIB, ((0, bytes(2 * MIB) + b"end"),))
    assert len(data_extents(path)) == 1
    before, content = blobs.sparse_sha256(path), path.read_bytes()
    punch_hole(path, MIB, MIB // 2)
    assert path.read_bytes() == content
    assert len(data_extents(path)) == 2
    assert blobs.sparse_sha256(path) != before


def test_a_sparse_blob_store_verifies_by_rehashing_the_same_layout(sparse_dir: Path) -> None:
    store = BlobStore(sparse_dir / "blobs", digest=blobs.sparse_sha256)
    source = sparse_file(sparse_dir / "ram")
    expected = blobs.sparse_sha256(source)
    digest, size = store.add(source)
    assert (digest, size) == (expected, 8 * MIB)
    assert len(data_extents(store.path(digest))) == 3  # the rename kept the holes
    (store.root / "stamps" / digest).unlink()
    assert store.verify(digest) == store.path(digest)
    flip_byte(store.path(digest), 3 * MIB + 20)
    with pytest.raises(IntegrityError):
        store.verify(digest)
