"""FAISS inner-product index over normalised vectors, with int64 ids.

Exact (``IndexFlatIP``) up to ``exact_max`` vectors, HNSW above it (the
crossover is measured by ``bench/search.py``). On a machine with faiss-gpu and
a GPU the flat index moves to the GPU. The index is derived state: the
registry rebuilds it from the database when it is missing, and applies the
difference (``sync``) when it is behind, so one new adapter never costs a
rebuild of a million-vector HNSW graph.

HNSW cannot delete in place: removed ids become tombstones filtered out of
results, and ``needs_rebuild`` asks for a fresh build once they pass 10 %.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from registry.blobs import write_atomic

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 96
MAX_TOMBSTONE_FRACTION = 0.10


def _gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


@dataclass
class VectorIndex:
    index: faiss.IndexIDMap2
    kind: str  # "flat" | "hnsw"
    dim: int
    tombstones: set[int] = field(default_factory=set)

    @property
    def size(self) -> int:
        """Live vectors (tombstones excluded)."""
        return int(self.index.ntotal) - len(self.tombstones)

    @classmethod
    def build(
        cls, ids: np.ndarray, vectors: np.ndarray, *, exact_max: int, dim: int | None = None
    ) -> VectorIndex:
        # ids: (N,) int64; vectors: (N, D) float32, rows L2-normalised
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = vectors.shape[0]
        d = dim if dim is not None else vectors.shape[1]
        inner: faiss.Index
        if n > exact_max:
            hnsw = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            hnsw.hnsw.efSearch = HNSW_EF_SEARCH
            inner, kind = hnsw, "hnsw"
        else:
            inner = faiss.IndexFlatIP(d)
            kind = "flat"
            if _gpu_count() > 0:
                inner = faiss.index_cpu_to_all_gpus(inner)
        index = faiss.IndexIDMap2(inner)
        if n:
            index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        return cls(index=index, kind=kind, dim=d)

    def ids(self) -> np.ndarray:
        """(N,) int64 ids of the live vectors."""
        all_ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        if not self.tombstones:
            return all_ids
        return all_ids[~np.isin(all_ids, np.fromiter(self.tombstones, np.int64))]

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """(M,) live ids -> their (M, D) float32 vectors as stored (flat and HNSW indexes
        keep them exactly); a missing id is a ValueError."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for row, i in enumerate(ids):
            if int(i) in self.tombstones:
                raise ValueError(f"id {int(i)} was removed from the index")
            try:
                out[row] = self.index.reconstruct(int(i))
            except RuntimeError as exc:  # faiss: the id is not in the map
                raise ValueError(f"id {int(i)} is not in the index") from exc
        return out

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        # ids: (M,) int64; vectors: (M, D) float32
        if len(ids) == 0:
            return
        revived = self.tombstones.intersection(int(i) for i in ids)
        if revived:  # an id deleted then re-added: drop the old HNSW entry's tombstone
            raise ValueError(f"ids {sorted(revived)[:3]} are tombstoned; rebuild the index")
        self.index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, np.int64)
        )

    def remove(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        if self.kind == "flat":
            # faiss's Python layer wraps an id array in an IDSelector itself
            self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))  # type: ignore[arg-type]
        else:
            self.tombstones.update(int(i) for i in ids)

    def needs_rebuild(self, exact_max: int) -> bool:
        total = int(self.index.ntotal)
        if total and len(self.tombstones) > MAX_TOMBSTONE_FRACTION * total:
            return True
        return (self.kind == "flat") != (self.size <= exact_max)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) queries -> scores (Q, k') and ids (Q, k'), k' <= k; empty slots are dropped."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        q = queries.shape[0]
        if self.size == 0:
            return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64)
        fetch = min(k + len(self.tombstones), int(self.index.ntotal))
        scores, ids = self.index.search(queries, fetch)
        if self.tombstones:
            keep = ~np.isin(ids, np.fromiter(self.tombstones, np.int64))
            scores = np.stack([row[m][:k] for row, m in zip(scores, keep, strict=True)])
            ids = np.stack([row[m][:k] for row, m in zip(ids, keep, strict=True)])
        return scores[:, :k], ids[:, :k]

    def to_bytes(self) -> bytes:
        index: faiss.Index = self.index
        if _gpu_count() > 0 and self.kind == "flat":
            index = faiss.index_gpu_to_cpu(index)
        return bytes(faiss.serialize_index(index).tobytes())

    def save(self, path: Path) -> None:
        write_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: Path, tombstones: set[int] | None = None) -> VectorIndex:
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        index = faiss.deserialize_index(raw)
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"{path} does not hold an id-mapped index")
        inner = faiss.downcast_index(index.index)
        kind = "flat"
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = HNSW_EF_SEARCH
            kind = "hnsw"
        return cls(index=index, kind=kind, dim=int(index.d), tombstones=set(tombstones or ()))
