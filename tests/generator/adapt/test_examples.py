"""A caller's examples: what makes a classification, and every bad input refused with
its reason."""

from __future__ import annotations

from typing import Any

import pytest

from generator.adapt.examples import MAX_EXAMPLES, MAX_TOTAL_CHARS, FewShot
from registry.errors import InvalidInput


def test_repeated_outputs_are_a_label_set_and_distinct_ones_free_form() -> None:
    shots = FewShot.parse([("a", "yes"), ("b", "no"), ("c", "yes")])
    assert shots.labels == ("yes", "no") and shots.is_classification
    free = FewShot.parse([{"input": "a", "output": "one"}, {"input": "b", "output": "two"}])
    assert free.labels == () and not free.is_classification
    given = FewShot.parse([("a", "x"), ("b", "y")], labels=["y", "x", "z"])
    assert given.labels == ("y", "x", "z")  # an explicit label set, unseen labels included


def test_folds_share_out_every_label() -> None:
    shots = FewShot.parse([(f"t{i}", "yes" if i % 4 else "no") for i in range(16)])
    folds = shots.folds(4, seed=1)
    assert sorted(i for f in folds for i in f) == list(range(16))
    assert all(len(f) == 4 for f in folds)
    assert all(any(shots.examples[i].output == "no" for i in f) for f in folds)
    assert shots.folds(4, seed=1) == folds and len(FewShot.parse([("a", "b")]).folds(4)) == 1


@pytest.mark.parametrize(
    ("pairs", "labels", "message"),
    [
        ([("a", "yes"), ("b", "maybe")], ["yes", "no"], r"outputs \['maybe'\] are not among"),
        ([("a", "yes"), ("b", "yes")], None, "one label only"),
        ([("a", "yes")], ["yes"], "one label only"),
        ([(" ", "yes"), ("b", "no")], None, "example 0: input is empty"),
        ([("a", ""), ("b", "no")], None, "example 0: output is empty"),
        ([("a", "yes")] * (MAX_EXAMPLES + 1), None, f"at most {MAX_EXAMPLES} examples"),
        ([("x" * 7_000, f"o{i}") for i in range(40)], None, f"over {MAX_TOTAL_CHARS}"),
        ([("x" * 9_000, "yes"), ("b", "no")], None, "example 0: input is over"),
        ([{"input": "a", "output": "b", "extra": 1}], None, "unknown fields"),
        ([{"input": "a"}], None, "must be strings"),
        ([("a", 3)], None, "must be strings"),
        ("a,b", None, "must be a list"),
        ([], None, "examples is empty"),
        ([("a", "x"), ("b", "y")], ["x", "x"], "distinct"),
        ([("a", "x"), ("b", "y")], "x,y", "list of strings"),
    ],
)
def test_bad_examples_name_the_problem(pairs: Any, labels: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        FewShot.parse(pairs, labels)
