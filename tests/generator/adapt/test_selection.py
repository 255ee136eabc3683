"""Choosing among fixed candidates: the best on every example, and a nested
cross-validation estimate that does not flatter the winner."""

from __future__ import annotations

import pytest
import torch

from generator.adapt.scoring import Scores
from generator.adapt.selection import best, select


def scores(right: list[int], margin: float = 0.0) -> Scores:
    return Scores(torch.tensor(right, dtype=torch.float), torch.full((len(right),), margin))


def test_the_best_candidate_wins_ties_go_by_margin_then_order() -> None:
    scored = {
        "a": scores([1, 1, 0, 0], margin=-0.5),
        "b": scores([1, 1, 0, 0], margin=-0.2),
        "c": scores([1, 0, 0, 0], margin=0.0),
    }
    assert best(scored) == "b"  # equal accuracy: the higher mean log-probability
    assert best({"x": scores([1, 0]), "y": scores([0, 1])}) == "x"  # a full tie: the first
    assert best(scored, [2, 3]) == "c"  # on those examples all miss: c's margin leads


def test_the_estimate_is_the_choice_scored_on_examples_it_was_not_chosen_by() -> None:
    # "lucky" is right on the first fold only; "steady" on three examples of every two
    scored = {
        "lucky": scores([1, 1, 0, 0, 0, 0, 0, 0]),
        "steady": scores([0, 1, 1, 0, 1, 1, 0, 1]),
    }
    folds = [[0, 1], [2, 3], [4, 5], [6, 7]]
    chosen = select(scored, folds)
    assert chosen.chosen == "steady" and chosen.scores == {"lucky": 0.25, "steady": 0.625}
    # held out fold 0, the rule sees lucky 0/6 < steady 4/6: steady, which scores 1/2
    # there; every other fold also picks steady: the estimate is steady's own score
    assert chosen.estimate == 0.625 and chosen.folds == 4
    # a rule that picks by noise is caught: two coin-flip candidates, each perfect on the
    # folds where the other fails, score 0.5 each, and so does picking between them
    flips = {"heads": scores([1, 1, 0, 0]), "tails": scores([0, 0, 1, 1])}
    picked = select(flips, [[0, 1], [2, 3]])
    assert picked.scores == {"heads": 0.5, "tails": 0.5}
    assert picked.estimate == 0.0  # held out, each fold's pick is the other candidate


def test_selection_weighs_each_label_as_much_as_another() -> None:
    # six "yes" examples and two "no": "always yes" is right on 6 of 8, "reads" on 6
    # (4 yes, both no); by plain accuracy the first listed wins the tie, by balanced
    # accuracy (each label's mean) "reads" does
    gold = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    scored = {
        "always yes": Scores(torch.tensor([1.0] * 6 + [0, 0]), torch.zeros(8), gold),
        "reads": Scores(torch.tensor([1.0, 1, 1, 1, 0, 0, 1, 1]), torch.zeros(8), gold),
    }
    assert scored["always yes"].mean(balanced=True) == (0.5, 0.0)
    assert scored["reads"].mean(balanced=True) == pytest.approx((5 / 6, 0.0))
    assert best(scored, balanced=False) == "always yes" and best(scored) == "reads"
    assert scored["reads"].mean([0, 1, 6], balanced=True)[0] == 1.0  # labels in idx only
    # scores and estimate are balanced accuracy too: every fold's pick is "reads" (left
    # out fold 0, "always yes" scores 1/2 on the rest and "reads" 2/3), so the examples
    # left out score as "reads" does everywhere
    chosen = select(scored, [[0, 1, 2, 6], [3, 4, 5, 7]])
    assert chosen.chosen == "reads" and chosen.scores["reads"] == 0.8333
    assert chosen.estimate == 0.8333
    plain = select(scored, [[0, 1, 2, 6], [3, 4, 5, 7]], balanced=False)
    assert plain.chosen == "always yes" and plain.scores["reads"] == 0.75
    # without the right labels (free-form, or scores made without them) plain accuracy
    unlabelled = {k: Scores(v.right, v.margin) for k, v in scored.items()}
    assert best(unlabelled) == "always yes"


def test_free_form_scores_compare_by_answer_likelihood() -> None:
    scored = {
        "a": Scores(None, torch.tensor([-1.0, -2.0])),
        "b": Scores(None, torch.tensor([-0.5, -3.0])),
    }
    assert best(scored) == "a" and select(scored, [[0], [1]]).scores == {"a": -1.5, "b": -1.75}
