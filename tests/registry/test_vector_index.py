from pathlib import Path

import numpy as np
import pytest

from registry.vector_index import VectorIndex


def unit(n: int, seed: int, dim: int = 16) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    unit_rows: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit_rows


@pytest.mark.parametrize("exact_max, kind", [(1000, "flat"), (10, "hnsw")])
def test_build_search_add_remove(exact_max: int, kind: str, tmp_path: Path) -> None:
    vecs = unit(50, 0)
    ids = np.arange(100, 150, dtype=np.int64)
    index = VectorIndex.build(ids, vecs, exact_max=exact_max)
    assert index.kind == kind and index.size == 50
    scores, found = index.search(vecs[:3], 5)
    assert found[:, 0].tolist() == [100, 101, 102]  # each vector finds itself first
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)

    index.remove(np.array([100, 101], dtype=np.int64))
    assert index.size == 48
    _, found = index.search(vecs[:2], 48)
    assert 100 not in found and 101 not in found and found.shape == (2, 48)

    extra = unit(1, 1)
    index.add(np.array([500], dtype=np.int64), extra)
    assert index.search(extra, 1)[1][0, 0] == 500
    assert sorted(index.ids().tolist()) == sorted([*range(102, 150), 500])

    index.save(tmp_path / "i.faiss")
    loaded = VectorIndex.load(tmp_path / "i.faiss", index.tombstones)
    assert loaded.kind == kind and loaded.size == index.size
    assert np.array_equal(loaded.search(vecs[5:8], 4)[1], index.search(vecs[5:8], 4)[1])


def test_hnsw_asks_for_rebuild_after_many_deletes() -> None:
    index = VectorIndex.build(np.arange(40, dtype=np.int64), unit(40, 2), exact_max=10)
    index.remove(np.arange(3, dtype=np.int64))
    assert not index.needs_rebuild(10)
    index.remove(np.arange(3, 6, dtype=np.int64))
    assert index.needs_rebuild(10)  # 6 of 40 tombstoned > 10 %


def test_kind_follows_size() -> None:
    index = VectorIndex.build(np.arange(5, dtype=np.int64), unit(5, 3), exact_max=5)
    assert index.kind == "flat" and not index.needs_rebuild(5)
    index.add(np.array([9], dtype=np.int64), unit(1, 4))
    assert index.needs_rebuild(5)  # grew past the exact threshold


def test_empty_index() -> None:
    index = VectorIndex.build(
        np.zeros(0, np.int64), np.zeros((0, 8), np.float32), exact_max=10, dim=8
    )
    scores, ids = index.search(unit(2, 5, dim=8), 3)
    assert scores.shape == (2, 0) and ids.shape == (2, 0)
