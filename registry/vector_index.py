"""FAISS inner-product index over normalised vectors, with int64 ids.

Exact (``IndexFlatIP``) up to ``exact_max`` vectors, HNSW above it (the
crossover is measured by ``bench/search.py``). On a machine with faiss-gpu and
a GPU the flat index moves to the GPU. The index is derived state: the
registry rebuilds it from the database whenever it is missing or stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss  # type: ignore[import-untyped]
import numpy as np

from registry.blobs import write_atomic

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 96


def _gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


@dataclass
class VectorIndex:
    index: faiss.Index
    kind: str  # "flat" | "hnsw"
    dim: int

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(
        cls, ids: np.ndarray, vectors: np.ndarray, *, exact_max: int, dim: int | None = None
    ) -> VectorIndex:
        # vectors: (N, D) float32 L2-normalised; ids: (N,) int64
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = vectors.shape[0]
        d = dim if n == 0 and dim is not None else vectors.shape[1]
        if n > exact_max:
            inner = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            inner.hnsw.efSearch = HNSW_EF_SEARCH
            kind = "hnsw"
        else:
            inner = faiss.IndexFlatIP(d)
            kind = "flat"
            if _gpu_count() > 0:
                inner = faiss.index_cpu_to_all_gpus(inner)
        index = faiss.IndexIDMap2(inner)
        if n:
            index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        return cls(index=index, kind=kind, dim=d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) queries -> scores (Q, k) and ids (Q, k); missing slots have id -1."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.size == 0:
            q = queries.shape[0]
            return np.zeros((q, 0), np.float32), np.zeros((q, 0), np.int64)
        scores, ids = self.index.search(queries, min(k, self.size))
        return scores, ids

    def save(self, path: Path) -> None:
        index = self.index
        if _gpu_count() > 0 and self.kind == "flat":
            index = faiss.index_gpu_to_cpu(index)
        write_atomic(path, faiss.serialize_index(index).tobytes())

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        index = faiss.deserialize_index(raw)
        inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
        kind = "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = HNSW_EF_SEARCH
        return cls(index=index, kind=kind, dim=int(index.d))
