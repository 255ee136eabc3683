"""bench/selection_rules.py's rules, its draws over a scored pool and its report."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from bench.selection_rules import RULES, SERVED, choose, expected, report, served, wider
from generator.adapt.scoring import Scores
from generator.adapt.selection import best


def candidate(test: float, right: list[int], p: list[float]) -> dict[str, Any]:
    return {"test": test, "pool_right": right, "pool_logp": [math.log(x) for x in p]}


def task(name: str = "t", oracle: float = 0.9) -> dict[str, Any]:
    """'sure' gets 3 of 4 right with confidence and one badly wrong; 'hedge' gets 2 of
    4 right but is never far off; 'none' is the bare model at chance."""
    return {
        "name": name,
        "family": "f",
        "nearest": "expert:a",
        "oracle": oracle,
        "pool_gold": [0, 0, 0, 0],  # one label: balanced and plain accuracy agree
        "candidates": {
            "expert:a": candidate(0.8, [1, 1, 1, 0], [0.99, 0.99, 0.99, 0.001]),
            "hedge": candidate(0.6, [1, 1, 0, 0], [0.6, 0.6, 0.45, 0.45]),
            "none": candidate(0.5, [0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]),
        },
    }


ALL = ["expert:a", "hedge", "none"]


def test_each_rule_picks_by_its_own_score_and_ties_go_to_the_first_listed() -> None:
    t, idx = task(), np.arange(4)
    assert choose(t, idx, RULES[SERVED], ALL) == "expert:a"  # 3 of 4 right
    assert choose(t, idx, RULES["probability of the right label"], ALL) == "expert:a"  # 0.74
    assert choose(t, idx, RULES["log-likelihood"], ALL) == "hedge"  # the 0.001 sinks expert:a
    # on examples 0 and 1 expert:a and hedge are both right on both: the margin decides
    assert choose(t, np.array([0, 1]), RULES[SERVED], ALL) == "expert:a"
    tied = task()
    tied["candidates"]["hedge"] = dict(tied["candidates"]["none"])
    assert choose(tied, np.array([2, 3]), RULES["log-likelihood"], ALL) == "hedge"  # listed first


def test_expected_accuracy_averages_the_picks_test_scores_over_draws() -> None:
    t = task()
    full = expected(
        t, RULES[SERVED], k=4, draws=5, seed=0, names=ALL
    )  # every draw is the whole pool
    assert full == pytest.approx(0.8)
    partial = expected(t, RULES["log-likelihood"], k=2, draws=200, seed=0, names=ALL)
    assert 0.6 <= partial <= 0.8
    assert (
        expected(t, RULES["log-likelihood"], k=2, draws=200, seed=0, names=ALL) == partial
    )  # seeded


def test_the_report_pairs_every_rule_with_the_served_one() -> None:
    data = {
        "tasks": {"a": task("a"), "b": task("b", oracle=0.7)},
        "pool": 4, "seed": 0, "held_out": False,
    }  # fmt: skip
    text = report(data, k=4, draws=3)
    assert text.startswith("2 training tasks, 3 draws of k = 4 from a pool of 4")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "+0.000 [+0.000, +0.000]" in rows[f"selection by {SERVED}"]
    assert "-0.200 [-0.200, -0.200]" in rows["selection by log-likelihood"]
    assert rows["bare"].split("|")[2].strip() == "0.500"
    assert rows["best candidate on the test split"].split("|")[2].strip() == "0.800"
    # shares of the gain: a (0.8-0.5)/(0.9-0.5) = 75 %, b (0.8-0.5)/(0.7-0.5) = 150 %
    assert rows["nearest expert"].split("|")[4].strip() == "112.5%"
    assert report({**data, "tasks": {}}, k=4, draws=3).startswith("no task")
    old = {"a": task("a")}  # a file kept before the pools' labels were
    del old["a"]["pool_gold"]
    assert report({**data, "tasks": old}, k=4, draws=3).startswith("the file lacks its pools'")
    held = report({**data, "held_out": True}, k=4, draws=3)
    assert held.startswith("2 held-out tasks") and "left out" not in held.splitlines()[0]


def test_extra_experts_join_after_the_served_ones_and_get_their_own_row() -> None:
    t = task()
    t["candidates"]["expert:b"] = candidate(0.9, [1, 1, 1, 1], [0.9, 0.9, 0.9, 0.9])
    t["extra"] = ["expert:b"]
    assert served(t) == ALL
    assert wider(t) == ["expert:a", "expert:b", "hedge", "none"]
    assert choose(t, np.arange(4), RULES[SERVED], served(t)) == "expert:a"
    assert choose(t, np.arange(4), RULES[SERVED], wider(t)) == "expert:b"
    data = {"tasks": {"a": t}, "pool": 4, "seed": 0, "held_out": False}
    rows = {
        line.split("|")[1].strip(): line
        for line in report(data, k=4, draws=2).splitlines()
        if line.startswith("| ")
    }
    assert "+0.100 [+0.100, +0.100]" in rows[f"selection by {SERVED}, the 2 nearest experts alone"]
    # the best candidate is the best the service offers, not the extra expert
    assert rows["best candidate on the test split"].split("|")[2].strip() == "0.800"


def test_each_labels_accuracy_counts_the_labels_alike() -> None:
    # three examples of label 0, one of label 1: "expert:a" is right on all of label 0
    # and misses label 1 (a mean of 1/2 over the labels), "hedge" 2/3 and 0 (1/3), and
    # "none" 1/3 and 1 (2/3): by accuracy "expert:a" wins (3 of 4), by the labels "none"
    t = task()
    t["pool_gold"] = [0, 0, 0, 1]
    assert choose(t, np.arange(4), RULES["accuracy, then log-likelihood"], ALL) == "expert:a"
    assert choose(t, np.arange(4), RULES[SERVED], ALL) == "none"
    assert choose(t, np.arange(3), RULES[SERVED], ALL) == "expert:a"  # label 0 alone


def test_the_served_rule_is_the_one_the_service_chooses_by() -> None:
    """The bench's served rule picks what ``selection.best`` picks, ties included, so the
    study measures the rule the service runs; its "accuracy, then log-likelihood" picks
    what ``best`` picks with ``balanced=False``."""
    rng = np.random.default_rng(0)
    for trial in range(50):
        names = [f"c{i}" for i in range(5)]
        right = rng.integers(0, 2, size=(5, 12))
        logp = np.round(np.log(rng.uniform(0.05, 1, size=(5, 12))), 1)  # ties happen
        if trial % 5 == 0:
            right[3], logp[3] = right[1], logp[1]  # an exact tie: the first listed wins
        gold = rng.integers(0, 3, size=12)
        scored = {
            n: Scores(
                torch.tensor(right[i], dtype=torch.float32), torch.tensor(logp[i]),
                torch.tensor(gold),
            )
            for i, n in enumerate(names)
        }  # fmt: skip
        t = {
            "name": "t",
            "pool_gold": gold.tolist(),
            "candidates": {
                n: {"test": 0.0, "pool_right": right[i].tolist(), "pool_logp": logp[i].tolist()}
                for i, n in enumerate(names)
            },
        }
        idx = np.sort(rng.choice(12, size=6, replace=False))
        assert choose(t, idx, RULES[SERVED], names) == best(scored, idx.tolist())
        plain = RULES["accuracy, then log-likelihood"]
        assert choose(t, idx, plain, names) == best(scored, idx.tolist(), balanced=False)
