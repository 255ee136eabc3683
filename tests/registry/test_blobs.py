import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry.blobs import LocalBlobStore, sha256_hex, update_atomic, write_atomic
from registry.errors import CorruptBlob, NotFound

ROOT = Path(__file__).resolve().parents[2]


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


def test_updates_from_processes_at_once_all_land(tmp_path: Path) -> None:
    """Four processes each append 25 lines through ``update_atomic`` at the same time:
    all 100 are there; a change that raises leaves the file as it was."""
    path = tmp_path / "log.txt"
    script = (
        "import sys; from pathlib import Path; from registry.blobs import update_atomic\n"
        "for i in range(25):\n"
        "    update_atomic(Path(sys.argv[1]), lambda b: (b or b'') + f'{sys.argv[2]} {i}\\n'.encode())\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), str(p)], cwd=ROOT)
        for p in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    lines = path.read_text().splitlines()
    assert sorted(lines) == sorted(f"{p} {i}" for p in range(4) for i in range(25))

    def refuse(_: bytes | None) -> bytes:
        raise ValueError("no")

    with pytest.raises(ValueError):
        update_atomic(path, refuse)
    assert path.read_text().splitlines() == lines


def test_a_retired_blob_is_purged_or_restored(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    kept, dropped = store.put(b"kept"), store.put(b"dropped")
    tokens = [store.retire(kept), store.retire(dropped)]
    assert store.retire(kept) is None  # already aside
    assert not store.exists(kept) and not store.exists(dropped)
    assert tokens[0] is not None and tokens[1] is not None
    store.restore(tokens[0])  # the delete's transaction failed
    store.purge(tokens[1])  # it committed
    assert store.get(kept) == b"kept"
    assert not store.exists(dropped)
    assert [p.name for p in (tmp_path / ".retired").iterdir()] == []


def test_recovery_settles_what_a_killed_process_left(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    referred, orphan = store.put(b"referred"), store.put(b"orphan")
    child = subprocess.Popen(["true"])
    child.wait()
    ended = child.pid  # retired them, then was killed
    for key in (referred, orphan):
        token = store.retire(key)
        assert token is not None  # a killed process: neither restored nor purged
        Path(token).rename(Path(token).with_name(f"{key}.{ended}.x"))
    old_tmp = tmp_path / referred[:2] / ".half-written.tmp"
    old_tmp.write_bytes(b"half")
    os.utime(old_tmp, (0, 0))
    fresh_tmp = tmp_path / referred[:2] / ".being-written.tmp"  # another worker's, now
    fresh_tmp.write_bytes(b"half")

    done = store.recover(lambda key: key == referred)

    assert done == {"restored": 1, "purged": 1, "temporary_files_removed": 1}
    assert store.get(referred) == b"referred"
    assert not store.exists(orphan)
    assert not old_tmp.exists() and fresh_tmp.exists()


def test_recovery_leaves_a_live_process_s_delete_alone(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    key = store.put(b"being deleted")
    token = store.retire(key)
    assert token is not None
    live = Path(token).with_name(f"{key}.{os.getppid()}.x")  # the parent process runs
    Path(token).rename(live)
    assert store.recover(lambda _key: True)["restored"] == 0
    assert live.exists() and not store.exists(key)
