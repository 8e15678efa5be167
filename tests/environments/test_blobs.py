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
