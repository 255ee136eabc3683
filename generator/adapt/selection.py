"""Choosing among fixed candidate adapters by their scores on the caller's examples.

A fixed candidate (the zero-shot generated adapter, an expert's own weights, a
mixture of experts, no adapter) never learns from the examples, so its score on
them is already a held-back score. Choosing the best of several is not: the
maximum of noisy scores flatters the winner. The estimate of the chosen
adapter is therefore nested cross-validation of the rule itself: the examples
are split into folds, the rule picks a candidate on all folds but one and that
pick is scored on the fold left out; the mean over folds is what the chosen
adapter is expected to score on new inputs. The choice returned uses every
example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from generator.adapt.scoring import Scores
from registry.errors import InvalidInput

FOLDS = 4


@dataclass(frozen=True)
class Selection:
    chosen: str
    scores: dict[str, float]  # candidate -> its score on every example (held back by nature)
    margins: dict[str, float]  # candidate -> its mean margin (ties are broken by it)
    estimate: float  # the chosen adapter's expected score on new inputs (nested CV)
    folds: int


def best(
    scored: dict[str, Scores], idx: Sequence[int] | None = None, *, balanced: bool = False
) -> str:
    """The candidate with the highest (score, margin) on ``idx``; ties go to the one
    listed first. ``balanced``: each label's examples count as much as another's."""
    order = list(scored)
    return max(order, key=lambda c: (*scored[c].mean(idx, balanced=balanced), -order.index(c)))


def select(
    scored: dict[str, Scores], folds: Sequence[Sequence[int]], *, balanced: bool = False
) -> Selection:
    """The best candidate over all examples, with the nested-CV estimate of picking so.
    ``folds`` partition the example indices (one fold: no estimate is possible, and the
    chosen candidate's own score stands in, flagged by ``folds == 1``). ``balanced``
    chooses by the mean of each label's scores; the estimate is plain accuracy."""
    if not scored:
        raise InvalidInput("no candidate adapters to choose from")
    everyone = sorted(i for fold in folds for i in fold)
    chosen = best(scored, everyone, balanced=balanced)
    if len(folds) > 1:
        picks = []
        for f, fold in enumerate(folds):
            rest = [i for g, other in enumerate(folds) if g != f for i in other]
            pick = best(scored, rest, balanced=balanced)
            picks.append((scored[pick].mean(fold)[0], len(fold)))
        estimate = sum(s * n for s, n in picks) / sum(n for _, n in picks)
    else:
        estimate = scored[chosen].mean(everyone)[0]
    return Selection(
        chosen=chosen,
        scores={c: round(s.mean(everyone)[0], 4) for c, s in scored.items()},
        margins={c: round(s.mean(everyone)[1], 4) for c, s in scored.items()},
        estimate=round(estimate, 4),
        folds=len(folds),
    )
