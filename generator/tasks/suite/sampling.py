"""Turning labelled text pools into balanced, deterministic train/test splits.

Each task draws from its own ``random.Random`` seeded with the suite seed plus
a stable hash of the task's name (sha256, not Python's salted ``hash()``), so a
task's split does not change when other tasks are added, removed or reordered.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from generator.tasks.task import Example, Task
from registry.errors import InvalidInput

N_TRAIN = 256
N_TEST = 100
MIN_TRAIN = 120
MIN_TEST = 60
# Inputs are cut to about this many characters (at a word boundary) so that a
# prompt stays near 80 tokens without the chat template's system prompt.
CLIP_CHARS = 240


class Provenance(TypedDict):
    """The keyword arguments of ``make_task`` that a module's tasks share."""

    seed: int
    source: str
    licence: str


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


def match_lengths(
    pools: Mapping[str, Iterable[str]], rng: random.Random, *, width: int = 20
) -> dict[str, list[str]]:
    """Subsample the pools so that every label has the same histogram of input lengths.

    Use it where the labels' texts differ in length for an incidental reason (two
    corpora transcribed differently) so that length alone cannot give the answer.
    """
    buckets: dict[str, dict[int, list[str]]] = {}
    for label, pool in pools.items():
        by_length: dict[int, list[str]] = {}
        for text in dict.fromkeys(pool):
            by_length.setdefault(len(text) // width, []).append(text)
        buckets[label] = by_length
    matched: dict[str, list[str]] = {label: [] for label in buckets}
    shared = set.intersection(*(set(b) for b in buckets.values()))
    for bucket in sorted(shared):
        n = min(len(b[bucket]) for b in buckets.values())
        for label, by_length in buckets.items():
            matched[label] += rng.sample(by_length[bucket], n)
    return matched


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
    distinct = {
        label: list(dict.fromkeys(x for x in pool if x.strip())) for label, pool in pools.items()
    }
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
