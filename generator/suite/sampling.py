"""Turning labelled text pools into balanced, deterministic train/test splits.

Each task draws from its own ``random.Random`` seeded with the suite seed plus
a stable hash of the task's name (sha256, not Python's salted ``hash()``), so a
task's split does not change when other tasks are added, removed or reordered.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from typing import Any

from generator.tasks import Example, Task
from registry.errors import InvalidInput

N_TRAIN = 256
N_TEST = 100
MIN_TRAIN = 120
MIN_TEST = 60
# Inputs are cut to about this many characters (at a word boundary) so that a
# prompt stays near 80 tokens without the chat template's system prompt.
CLIP_CHARS = 240

def task_rng(name: str, seed: int) -> random.Random:
    """The task's own random stream: suite seed + a stable hash of its name."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return random.Random(seed + int.from_bytes(digest[:8], "big"))


def squash(text: str) -> str:
    """Collapse runs of whitespace (newlines included) to single spaces."""
    return " ".join(text.split())


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    """``text`` with whitespace squashed, cut at a word boundary to about ``limit`` chars."""
    text = squash(text)
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    cut = head.rfind(" ")
    if cut < limit // 2:
        cut = limit
    return head[:cut].rstrip(" ,;:-") + " ..."


def balanced_split(
    name: str,
    pools: Mapping[str, Iterable[str]],
    rng: random.Random,
    *,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
) -> tuple[list[Example], list[Example]]:
    """Equal numbers of examples per label in test (and in train), disjoint inputs.

    Empty inputs and inputs that occur under more than one label are dropped.
    With plenty of data every label gets ``n_test // k`` test and ``n_train // k``
    train examples; a small pool shrinks both, keeping at least MIN_TEST test and
    MIN_TRAIN train examples, or the task is refused with InvalidInput.
    """
    if len(pools) < 2:
        raise InvalidInput(f"task {name}: needs at least two labels, got {list(pools)}")
    # Order-preserving dedupe: the pools' order (file order) is part of the
    # determinism, so builders must produce them in a stable order.
    distinct = {label: list(dict.fromkeys(x for x in pool if x.strip())) for label, pool in pools.items()}
    sets = [set(pool) for pool in distinct.values()]
    shared: set[str] = set()
    for i, a in enumerate(sets):
        for b in sets[i + 1 :]:
            shared |= a & b
    clean = {label: [x for x in pool if x not in shared] for label, pool in distinct.items()}
    k = len(clean)
    smallest = min(len(pool) for pool in clean.values())
    per_test = min(n_test // k, max(-(-MIN_TEST // k), smallest * n_test // (n_train + n_test)))
    per_train = min(n_train // k, smallest - per_test)
    if per_test * k < MIN_TEST or per_train * k < MIN_TRAIN:
        sizes = ", ".join(f"{label}={len(pool)}" for label, pool in clean.items())
        raise InvalidInput(
            f"task {name}: too little distinct data for a balanced split ({sizes}); "
            f"needs {-(-(MIN_TRAIN + MIN_TEST) // k)} per label"
        )
    train: list[Example] = []
    test: list[Example] = []
    for label, pool in clean.items():
        drawn = rng.sample(pool, per_test + per_train)
        test += [Example(x, label) for x in drawn[:per_test]]
        train += [Example(x, label) for x in drawn[per_test:]]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def make_task(
    name: str,
    description: str,
    family: str,
    pools: Mapping[str, Iterable[str]],
    *,
    seed: int,
    source: str,
    licence: str,
    meta: dict[str, Any] | None = None,
) -> Task:
    """A classification task whose labels are the keys of ``pools`` (in that order)."""
    train, test = balanced_split(name, pools, task_rng(name, seed))
    return Task(
        name=name,
        description=description,
        family=family,
        labels=tuple(pools),
        train=tuple(train),
        test=tuple(test),
        source=source,
        licence=licence,
        meta=dict(meta or {}),
    )
