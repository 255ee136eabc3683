"""A caller's labelled examples of a new task, checked once.

Up to ``MAX_EXAMPLES`` ``{"input", "output"}`` pairs. With an explicit label set,
or when outputs repeat, the task is a classification whose labels are the
given ones (or the distinct outputs, in order of first appearance), scored by
rank classification like every task; otherwise the outputs are free-form and
scored by their answer tokens' likelihood. A classification needs at least two
labels, and every output must be one of them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from generator.tasks.task import Example, Task
from registry.errors import InvalidInput

MAX_EXAMPLES = 64
MAX_INPUT_CHARS = 8_000
MAX_OUTPUT_CHARS = 500
MAX_TOTAL_CHARS = 256_000  # all inputs and outputs together
MAX_LABELS = 50


@dataclass(frozen=True)
class FewShot:
    examples: tuple[Example, ...]
    labels: tuple[str, ...]  # empty: free-form outputs

    @property
    def is_classification(self) -> bool:
        return bool(self.labels)

    def __len__(self) -> int:
        return len(self.examples)

    @classmethod
    def parse(cls, pairs: Any, labels: Sequence[str] | None = None) -> FewShot:
        """Examples from ``[{"input", "output"}, ...]`` or ``[(input, output), ...]``;
        ``InvalidInput`` naming the first problem."""
        if not isinstance(pairs, list | tuple):
            raise InvalidInput("examples must be a list of {input, output} pairs")
        if not pairs:
            raise InvalidInput("examples is empty: give at least one {input, output} pair")
        if len(pairs) > MAX_EXAMPLES:
            raise InvalidInput(f"at most {MAX_EXAMPLES} examples, got {len(pairs)}")
        out, total = [], 0
        for i, pair in enumerate(pairs):
            given, expected = _pair(i, pair)
            if not given.strip():
                raise InvalidInput(f"example {i}: input is empty")
            if not expected.strip():
                raise InvalidInput(f"example {i}: output is empty")
            if len(given) > MAX_INPUT_CHARS:
                raise InvalidInput(f"example {i}: input is over {MAX_INPUT_CHARS} characters")
            if len(expected) > MAX_OUTPUT_CHARS:
                raise InvalidInput(f"example {i}: output is over {MAX_OUTPUT_CHARS} characters")
            total += len(given) + len(expected)
            out.append(Example(given, expected.strip()))
        if total > MAX_TOTAL_CHARS:
            raise InvalidInput(f"examples total {total} characters, over {MAX_TOTAL_CHARS}")
        return cls(tuple(out), _labels(out, labels))

    def task(self, description: str) -> Task:
        """A task of these examples (train and test both hold them) for the scorer."""
        return Task(
            name="request",
            description=description,
            family="request",
            labels=self.labels,
            train=self.examples,
            test=self.examples,
            source="the caller",
            licence="the caller's",
        )

    def subset(self, indices: Sequence[int]) -> FewShot:
        return FewShot(tuple(self.examples[i] for i in indices), self.labels)

    def folds(self, count: int, seed: int = 0) -> list[list[int]]:
        """``count`` folds of example indices (fewer when there are fewer examples), each
        label dealt round-robin across them so every fold holds a share of each."""
        count = max(1, min(count, len(self.examples)))
        rng = random.Random(seed)
        by_label: dict[str, list[int]] = {}
        for i, e in enumerate(self.examples):
            by_label.setdefault(e.output if self.labels else "", []).append(i)
        folds: list[list[int]] = [[] for _ in range(count)]
        dealt = 0
        for key in sorted(by_label):
            members = by_label[key]
            rng.shuffle(members)
            for i in members:
                folds[dealt % count].append(i)
                dealt += 1
        return [sorted(f) for f in folds]


def _pair(i: int, pair: Any) -> tuple[str, str]:
    if isinstance(pair, dict):
        unknown = sorted(set(pair) - {"input", "output"})
        if unknown:
            raise InvalidInput(f"example {i} has unknown fields {unknown}: use input, output")
        given, expected = pair.get("input"), pair.get("output")
    elif isinstance(pair, list | tuple) and len(pair) == 2:
        given, expected = pair
    else:
        raise InvalidInput(f"example {i} must be an {{input, output}} pair")
    if not isinstance(given, str) or not isinstance(expected, str):
        raise InvalidInput(f"example {i}: input and output must be strings")
    return given, expected


def _labels(examples: Sequence[Example], given: Sequence[str] | None) -> tuple[str, ...]:
    outputs = [e.output for e in examples]
    if given is not None:
        if isinstance(given, str) or not all(isinstance(x, str) for x in given):
            raise InvalidInput("labels must be a list of strings")
        labels = tuple(x.strip() for x in given)
        if any(not x for x in labels) or len(set(labels)) != len(labels):
            raise InvalidInput(f"labels must be distinct non-empty strings, got {list(given)!r}")
        stray = sorted(set(outputs) - set(labels))
        if stray:
            raise InvalidInput(f"outputs {stray[:3]} are not among the labels {list(labels)}")
    elif len(set(outputs)) < len(outputs):  # outputs repeat: a label set
        labels = tuple(dict.fromkeys(outputs))
    else:
        return ()  # every output differs: free-form
    if len(labels) < 2:
        raise InvalidInput(
            f"the examples have one label only ({labels[0]!r}): a classification needs "
            "examples of at least two labels (or give `labels`)"
        )
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"at most {MAX_LABELS} labels, got {len(labels)}")
    return labels
