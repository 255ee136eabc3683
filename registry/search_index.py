"""The registry's description indexes: one FAISS index per base model, kept
in step with the database.

The database is the source of truth; an index is derived state. Every add or
delete bumps ``registry_state.generation``; an index built at another
generation (in this process's memory or in ``$LORAMINT_HOME/index``) is
brought up to date by applying the difference, or rebuilt when that is
cheaper or when it has outgrown its kind.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry.blobs import write_atomic
from registry.embeddings import Embedder
from registry.models import AdapterRow, DescriptionEmbeddingRow, RegistryStateRow
from registry.settings import Settings
from registry.vector_index import VectorIndex


class DescriptionIndexes:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        embedder: Callable[[], Embedder],
        database: str,
    ) -> None:
        self._sessions = sessions
        self.settings = settings
        self._get_embedder = embedder
        self._database = database
        self._lock = threading.Lock()
        # base_model_id -> (generation it was built at, index)
        self._indexes: dict[int, tuple[int, VectorIndex]] = {}
        self._unsaved: dict[int, int] = {}  # changes applied since the index was last saved

    @property
    def embedder(self) -> Embedder:
        return self._get_embedder()

    def generation(self) -> int:
        with self._sessions() as s:
            return int(
                s.scalar(sa.select(RegistryStateRow.generation).where(RegistryStateRow.id == 1))
                or 0
            )

    def get(self, base_model_id: int) -> VectorIndex:
        """The FAISS index of one base model's descriptions, brought up to date.

        Order of preference: the in-memory index at the current generation; an
        index (in memory or on disk, any generation) with the difference to the
        database applied; a full rebuild from the database.
        """
        generation = self.generation()
        with self._lock:
            cached = self._indexes.get(base_model_id)
            if cached and cached[0] == generation:
                return cached[1]
            index = cached[1] if cached else self._load_index(base_model_id)
            changed = 0
            if index is not None:
                try:
                    changed = self._sync_index(base_model_id, index)
                except ValueError:
                    index = None
                if index is not None and index.needs_rebuild(self.settings.exact_index_max):
                    index = None
            if index is None:
                index = self._build_index(base_model_id)
                self._save_index(base_model_id, index)
                self._unsaved[base_model_id] = 0
            elif changed:
                unsaved = self._unsaved.get(base_model_id, 0) + changed
                # small indexes are cheap to write; big HNSW graphs are saved
                # once the changes since the last save pass 1 %
                if index.kind == "flat" or unsaved > 0.01 * max(index.size, 1):
                    self._save_index(base_model_id, index)
                    unsaved = 0
                self._unsaved[base_model_id] = unsaved
            self._indexes[base_model_id] = (generation, index)
            return index

    def _embedding_query(self, base_model_id: int) -> sa.Select[Any]:
        return (
            sa.select(DescriptionEmbeddingRow.adapter_id)
            .join(AdapterRow)
            .where(
                AdapterRow.base_model_id == base_model_id,
                DescriptionEmbeddingRow.model == self.embedder.name,
            )
        )

    def _vectors(self, s: Session, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # (N,) ids -> ids in the order read, (N, D) vectors
        out_ids: list[int] = []
        chunks: list[bytes] = []
        for start in range(0, len(ids), 5000):
            part = [int(i) for i in ids[start : start + 5000]]
            for adapter_id, vector in s.execute(
                sa.select(DescriptionEmbeddingRow.adapter_id, DescriptionEmbeddingRow.vector).where(
                    DescriptionEmbeddingRow.adapter_id.in_(part)
                )
            ):
                out_ids.append(adapter_id)
                chunks.append(vector)
        dim = self.embedder.dim
        vectors = np.frombuffer(b"".join(chunks), dtype=np.float32).reshape(len(out_ids), dim)
        return np.array(out_ids, dtype=np.int64), vectors

    def _sync_index(self, base_model_id: int, index: VectorIndex) -> int:
        """Apply the database's adds and deletes to ``index``; return how many."""
        with self._sessions() as s:
            db_ids = np.array(s.scalars(self._embedding_query(base_model_id)).all(), dtype=np.int64)
            have = index.ids()
            added = np.setdiff1d(db_ids, have)
            removed = np.setdiff1d(have, db_ids)
            if len(added) > max(len(db_ids) // 2, 1000):
                raise ValueError("too far behind: rebuild")
            new_ids, new_vectors = self._vectors(s, added)
        index.remove(removed)
        index.add(new_ids, new_vectors)
        return int(len(added) + len(removed))

    def _build_index(self, base_model_id: int) -> VectorIndex:
        with self._sessions() as s:
            ids = np.array(s.scalars(self._embedding_query(base_model_id)).all(), dtype=np.int64)
            ids, vectors = self._vectors(s, ids)
        return VectorIndex.build(
            ids, vectors, exact_max=self.settings.exact_index_max, dim=self.embedder.dim
        )

    def _index_paths(self, base_model_id: int) -> tuple[Path, Path]:
        root = self.settings.index_dir
        return root / f"base-{base_model_id}.faiss", root / f"base-{base_model_id}.json"

    def _index_identity(self) -> dict[str, str]:
        return {
            "embedder": self.embedder.name,
            "database": self._database,
        }

    def _load_index(self, base_model_id: int) -> VectorIndex | None:
        data_path, meta_path = self._index_paths(base_model_id)
        try:
            meta = json.loads(meta_path.read_text())
            if any(meta.get(k) != v for k, v in self._index_identity().items()):
                return None
            return VectorIndex.load(data_path, set(meta.get("tombstones", [])))
        except (OSError, ValueError, RuntimeError):
            return None  # missing or unreadable: rebuild from the database

    def _save_index(self, base_model_id: int, index: VectorIndex) -> None:
        data_path, meta_path = self._index_paths(base_model_id)
        meta = {
            **self._index_identity(),
            "kind": index.kind,
            "size": index.size,
            "tombstones": sorted(index.tombstones),
        }
        try:
            index.save(data_path)
            write_atomic(meta_path, json.dumps(meta).encode())
        except OSError:
            pass  # a read-only home still serves searches from memory


def bump_generation(s: Session) -> None:
    """Mark every process's derived index stale (in ``s``'s transaction): the set of
    embedded adapters changed."""
    s.execute(_BUMP)


# built once: every registration runs it
_BUMP = (
    sa.update(RegistryStateRow)
    .where(RegistryStateRow.id == 1)
    .values(generation=RegistryStateRow.generation + 1)
)
