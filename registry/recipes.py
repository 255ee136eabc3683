"""Generated adapters kept as recipes: what rebuilds the weights, not the weights.

Generation is deterministic given (generator, description embedding, seed), so
a generated adapter needs a few hundred bytes of database (``adapter_recipes``:
the generator's id and checkpoint checksum, the seed; the description and its
embedding are the adapter's own rows) instead of a 1.8 MB blob. Its weights are
built when they are asked for (download, export, the Python API) by a
``RecipeBuilder``, checked against the adapter's ``sha256``, and kept in a
bounded in-memory cache (``WeightCache``, LRU by bytes).

The registry cannot decode (that is the generator package's work, a layer
above), so it finds its builder through the ``loramint.recipe_builders`` entry
point that ``pyproject.toml`` declares, or is handed one (``Registry(builder=)``).

What keeps a recipe rebuildable: its generator is never deleted while a recipe
needs it (``delete_generator`` refuses, or materialises them first), an expert
it mixed is never deleted under it (``delete_adapter`` materialises the
recipes built from it first), and decoding is bit-exact across processes,
thread counts and batch sizes (``tests/generator/serve/test_recipes.py``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from registry.errors import CorruptBlob, InvalidInput

ENTRY_POINT_GROUP = "loramint.recipe_builders"


@dataclass(frozen=True)
class Recipe:
    """How a generated adapter's weights are rebuilt."""

    generator_id: int
    generator_sha256: str
    seed: int
    # the version of the code that decodes it: a change to the decode's arithmetic
    # bumps it, and recipes of an older one are materialised before the upgrade
    decoder: str


@dataclass(frozen=True)
class RecipeInput:
    """Everything a builder needs for one adapter."""

    adapter_id: int
    base_model: str
    description: str
    embedding: np.ndarray  # (D,) float32: the vector the generator decoded from
    recipe: Recipe


# (the registry, the recipe) -> the weights' safetensors bytes; the registry is typed
# Any here because it is the registry that imports this module
RecipeBuilder = Callable[[Any, RecipeInput], bytes]


def load_builder() -> RecipeBuilder:
    """The builder the installed packages declare (``loramint.recipe_builders``)."""
    from importlib.metadata import entry_points

    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    if not found:
        raise InvalidInput(
            "this adapter is kept as a recipe and no recipe builder is installed: "
            "install loramint (`make install`) so its generator package can rebuild it"
        )
    builder: RecipeBuilder = found[0].load()
    return builder


class WeightCache:
    """Recently built weights, keyed by their sha256, at most ``capacity`` bytes in
    all (least recently used first out). Thread-safe."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise InvalidInput(f"cache capacity must be >= 0 bytes, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._items[key] = data
            self._size += len(data)
            while self._size > self.capacity:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped)

    @property
    def size(self) -> int:
        return self._size

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {
                "items": len(self._items),
                "bytes": self._size,
                "capacity_bytes": self.capacity,
                "hits": self.hits,
                "misses": self.misses,
            }


def checked(built: bytes, expected_sha256: str, adapter_id: int) -> bytes:
    """``built`` if it hashes to what the adapter was registered with."""
    from registry.blobs import sha256_hex

    got = sha256_hex(built)
    if got != expected_sha256:
        raise CorruptBlob(
            f"adapter {adapter_id}'s recipe rebuilt weights with sha256 {got[:12]}…, not the "
            f"registered {expected_sha256[:12]}…: its generator or experts changed"
        )
    return built
