"""Content-addressed blob storage.

A blob's key is the sha256 of its bytes. Writes are atomic (temp file in the
same directory, fsync, rename, fsync of the directory), so a killed process
leaves either the whole blob or nothing under its key. Reads verify the sha256.
``BlobStore`` is the interface an S3-style store would implement.

Deleting is two-phase, so that a delete whose database transaction is rolled
back (or whose process is killed) loses nothing: ``retire`` moves the blob
aside, the caller commits, then ``purge`` removes it (or ``restore`` brings it
back). ``recover`` settles what a killed process left: retired blobs go back
when something still refers to them, and temporary files of unfinished writes
are removed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from registry.errors import CorruptBlob, NotFound


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store ``data``; return its key (sha256 hex). Idempotent."""

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``, verified against it."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    def retire(self, key: str) -> str | None:
        """Move ``key`` aside (None when it is missing); returns a token for the others."""

    def restore(self, token: str) -> None: ...

    def purge(self, token: str) -> None: ...

    def keys(self) -> Iterator[str]:
        """Every stored blob's key (for ``loramint gc``)."""
        ...

    def size(self, key: str) -> int:
        """Bytes of a stored blob (0 when it is gone)."""
        ...

    def recover(self, referenced: Callable[[str], bool]) -> dict[str, int]:
        """Settle interrupted writes and deletes; counts of what it did."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def update_atomic(path: Path, change: Callable[[bytes | None], bytes]) -> None:
    """Rewrite ``path`` (atomically) to ``change(its bytes)``, ``None`` when it does not
    exist yet, holding the file lock ``<path>.lock`` from the read to the write (the
    lock the registry's other shared files take): processes updating the same file at
    once never lose each other's changes. ``change`` may raise to leave the file as it
    is."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(path.name + ".lock"))):
        write_atomic(path, change(path.read_bytes() if path.exists() else None))


def _fsync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(dir_fd)


class LocalBlobStore:
    """Blobs as files ``root/ab/cdef...`` (first two hex digits fan out the directory)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise NotFound(f"not a blob key: {key!r}")
        return self.root / key[:2] / key[2:]

    def put(self, data: bytes) -> str:
        key = sha256_hex(data)
        path = self._path(key)
        try:
            if path.stat().st_size == len(data):
                return key
        except FileNotFoundError:  # absent, or retired by a delete a moment ago
            pass
        write_atomic(path, data)
        return key

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key} is missing from {self.root}") from exc
        if sha256_hex(data) != key:
            raise CorruptBlob(f"blob {key} at {path} does not match its sha256")
        return data

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def keys(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for fan in sorted(self.root.iterdir()):
            if len(fan.name) != 2 or not fan.is_dir():
                continue  # .retired and anything else that is no blob
            for path in sorted(fan.iterdir()):
                key = fan.name + path.name
                if len(key) == 64 and all(c in "0123456789abcdef" for c in key):
                    yield key

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return 0

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    @property
    def _trash(self) -> Path:
        return self.root / ".retired"

    def retire(self, key: str) -> str | None:
        path = self._path(key)
        self._trash.mkdir(parents=True, exist_ok=True)
        token = self._trash / f"{key}.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            os.replace(path, token)
        except FileNotFoundError:
            return None
        return str(token)

    def restore(self, token: str) -> None:
        retired = Path(token)
        key = retired.name.split(".", 1)[0]
        target = self._path(key)
        if target.exists():  # written again meanwhile: the retired copy is redundant
            retired.unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(retired, target)

    def purge(self, token: str) -> None:
        Path(token).unlink(missing_ok=True)

    def recover(self, referenced: Callable[[str], bool]) -> dict[str, int]:
        done = {"restored": 0, "purged": 0, "temporary_files_removed": 0}
        if self._trash.is_dir():
            for retired in self._trash.iterdir():
                key, _, rest = retired.name.partition(".")
                if _process_alive(rest.partition(".")[0]):
                    continue  # its delete is still under way in another worker
                if len(key) == 64 and referenced(key):
                    self.restore(str(retired))
                    done["restored"] += 1
                else:
                    retired.unlink(missing_ok=True)
                    done["purged"] += 1
        if self.root.is_dir():
            stale = time.time() - STALE_WRITE_SECONDS
            for tmp in self.root.glob("*/.*.tmp"):  # write_atomic's, from killed writes
                try:
                    if tmp.stat().st_mtime < stale:
                        tmp.unlink()
                        done["temporary_files_removed"] += 1
                except FileNotFoundError:
                    pass  # finished meanwhile
        return done


STALE_WRITE_SECONDS = 3600  # a temporary file this old belongs to a write that was killed


def _process_alive(pid: str) -> bool:
    """Whether the process that retired a blob still runs (then its delete is not over)."""
    if not pid.isdigit() or int(pid) in (0, os.getpid()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
