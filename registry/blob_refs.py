"""Blobs shared by content, kept and dropped under one lock.

A blob (an adapter's weights, an artifact, a checkpoint, a job's stage output)
is stored under its sha256, so two rows can refer to the same blob, and a
delete may drop a blob only when no row refers to it. Without a lock that
check races an upload of the same bytes: the upload writes (finds) the blob,
the delete sees no row yet and removes it, the upload commits a row whose blob
is gone. So every transaction that adds a reference or drops a blob first
takes the registry's write lock (``lock``: an UPDATE of the one
``registry_state`` row, a row lock on PostgreSQL and the write lock on
SQLite), then, still under it, an adding one makes sure its blobs are there
(``keep``) and a deleting one moves unreferenced blobs aside (``retire``),
which are purged after the commit or restored if it fails (``dropping``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry.blobs import BlobStore
from registry.models import (
    AdapterArtifactRow,
    AdapterRow,
    GeneratorRow,
    JobArtifactRow,
    RegistryStateRow,
)

REFERRING = (
    AdapterRow.blob_key,
    AdapterArtifactRow.blob_key,
    GeneratorRow.blob_key,
    JobArtifactRow.blob_key,
)


def lock(s: Session) -> None:
    """Take the registry's write lock for the rest of ``s``'s transaction; call it
    first, before any read (SQLite cannot upgrade two readers to writers)."""
    s.execute(
        sa.update(RegistryStateRow)
        .where(RegistryStateRow.id == 1)
        .values(generation=RegistryStateRow.generation)
    )


def referenced(s: Session, key: str) -> bool:
    return any(
        s.scalar(sa.select(sa.func.count()).select_from(column.class_).where(column == key))
        for column in REFERRING
    )


def keep(s: Session, blobs: BlobStore, data: Mapping[str, bytes]) -> None:
    """Under the lock: every blob the transaction is about to refer to is stored (written
    again if a delete removed it since it was first written)."""
    lock(s)
    for key, payload in data.items():
        if not blobs.exists(key):
            blobs.put(payload)


def retire(s: Session, blobs: BlobStore, keys: Sequence[str]) -> list[str]:
    """Under the lock, after the transaction's deletes: move aside the blobs no row refers
    to any more; returns their tokens for ``dropping``."""
    lock(s)
    s.flush()
    tokens = []
    for key in dict.fromkeys(keys):
        if not referenced(s, key):
            token = blobs.retire(key)
            if token is not None:
                tokens.append(token)
    return tokens


@contextmanager
def dropping(blobs: BlobStore) -> Iterator[list[str]]:
    """Collects retired blobs: purged when the block (and its commit) succeeds, restored
    when it fails."""
    tokens: list[str] = []
    try:
        yield tokens
    except BaseException:
        for token in tokens:
            blobs.restore(token)
        raise
    for token in tokens:
        blobs.purge(token)
