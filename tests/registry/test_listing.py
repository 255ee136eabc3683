"""Adapter listings in a chosen order, on SQLite and PostgreSQL: by measured accuracy
(unmeasured adapters last in both directions, a non-number counted as unmeasured),
name, rank and id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from registry.errors import InvalidInput
from registry.service import Registry
from tests.conftest import make_lora

# name -> (rank, metrics)
ADAPTERS: dict[str, tuple[int, dict[str, Any]]] = {
    "delta": (4, {"accuracy": 0.7, "base_accuracy": 0.5}),
    "alpha": (8, {}),
    "charlie": (2, {"accuracy": 0.9}),
    "bravo": (4, {"accuracy": "high"}),  # not a number: sorts as unmeasured
    "echo": (2, {"accuracy": 0.75}),
}


@pytest.fixture
def listed(registry: Registry, tiny_base: Path, tmp_path: Path) -> dict[str, int]:
    ids = {}
    for i, (name, (rank, metrics)) in enumerate(ADAPTERS.items()):
        folder = make_lora(tiny_base, tmp_path / name, seed=i, r=rank)
        rec = registry.add_adapter(
            folder, base_model=str(tiny_base), description=f"Task {name}", name=name,
            metrics=metrics,
        )  # fmt: skip
        ids[name] = rec.id
    return ids


def names(registry: Registry, **kw: Any) -> list[str]:
    return [r.name for r in registry.list_adapters(**kw)]


def test_accuracy_order_puts_unmeasured_last_both_ways(
    registry: Registry, listed: dict[str, int]
) -> None:
    assert names(registry, sort="accuracy", descending=True) == [
        "charlie", "echo", "delta", "alpha", "bravo",
    ]  # fmt: skip
    assert names(registry, sort="accuracy") == ["delta", "echo", "charlie", "alpha", "bravo"]
    # pages cut the same order
    assert names(registry, sort="accuracy", descending=True, limit=2, offset=1) == [
        "echo", "delta",
    ]  # fmt: skip


def test_other_orders(registry: Registry, listed: dict[str, int]) -> None:
    assert names(registry, sort="name") == sorted(ADAPTERS)
    assert names(registry, sort="name", descending=True) == sorted(ADAPTERS, reverse=True)
    assert names(registry, sort="rank") == ["charlie", "echo", "delta", "bravo", "alpha"]
    assert names(registry) == list(ADAPTERS)  # by id: registration order
    assert names(registry, sort="id", descending=True) == list(ADAPTERS)[::-1]
    assert names(registry, sort="created") == list(ADAPTERS)
    assert registry.count_adapters(provenance="imported") == len(ADAPTERS)
    assert registry.count_adapters(provenance="generated") == 0


def test_an_unknown_order_is_refused(registry: Registry, listed: dict[str, int]) -> None:
    with pytest.raises(InvalidInput, match="sort must be one of"):
        registry.list_adapters(sort="size; drop table adapters")
