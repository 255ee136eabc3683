from pathlib import Path

import pytest

from registry.blobs import LocalBlobStore, sha256_hex, write_atomic
from registry.errors import CorruptBlob, NotFound


def test_put_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    key = store.put(b"hello")
    assert key == sha256_hex(b"hello")
    assert store.put(b"hello") == key
    assert store.get(key) == b"hello"
    assert store.exists(key)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [tmp_path / key[:2] / key[2:]]


def test_read_verifies_sha256(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    key = store.put(b"weights")
    (tmp_path / key[:2] / key[2:]).write_bytes(b"tampered")
    with pytest.raises(CorruptBlob, match=key):
        store.get(key)


@pytest.mark.parametrize("key", ["", "abc", "../../etc/passwd", "g" * 64])
def test_malformed_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(NotFound):
        LocalBlobStore(tmp_path).get(key)


def test_missing_blob_and_delete(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    key = store.put(b"x")
    store.delete(key)
    store.delete(key)  # deleting twice is fine
    assert not store.exists(key)
    with pytest.raises(NotFound):
        store.get(key)


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    write_atomic(target, b"old")

    with pytest.raises(TypeError):
        write_atomic(target, object())  # type: ignore[arg-type]  # not bytes: the write fails
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temp file left
