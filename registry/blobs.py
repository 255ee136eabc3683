"""Content-addressed blob storage.

A blob's key is the sha256 of its bytes. Writes are atomic (temp file in the
same directory, fsync, rename, fsync of the directory), so a killed process
leaves either the whole blob or nothing under its key. Reads verify the sha256.
``BlobStore`` is the interface an S3-style store would implement.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
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
        if path.exists() and path.stat().st_size == len(data):
            return key
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

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
