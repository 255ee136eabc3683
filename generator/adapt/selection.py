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

Candidates are compared by balanced accuracy: the mean over the labels of the
accuracy on each label's examples (then, to break ties, of the log-probability
of the right label). Every task's splits here hold their labels alike, but a
draw of 16 examples often does not, and plain accuracy then favours a
candidate leaning to the commoner label; on training tasks the balanced score
picks better (``docs/experiments.md``). Scores and estimate are then balanced
accuracy too; ``balanced=False`` gives plain accuracy throughout.
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
    scored: dict[str, Scores], idx: Sequence[int] | None = None, *, balanced: bool = True
) -> str:
    """The candidate with the highest (score, margin) on ``idx``, each the mean of the
    labels' own means (``balanced=False``: over the examples); ties go to the one listed
    first."""
    return top({c: s.mean(idx, balanced=balanced) for c, s in scored.items()})


def top(means: dict[str, tuple[float, float]]) -> str:
    """The candidate with the highest (score, margin); ties go to the one listed first."""
    order = list(means)
    return max(order, key=lambda c: (*means[c], -order.index(c)))


def select(
    scored: dict[str, Scores], folds: Sequence[Sequence[int]], *, balanced: bool = True
) -> Selection:
    """The best candidate over all examples, with the nested-CV estimate of picking so.
    ``folds`` partition the example indices (one fold: no estimate is possible, and the
    chosen candidate's own score stands in, flagged by ``folds == 1``). The estimate
    scores each example with the pick made without its fold."""
    if not scored:
        raise InvalidInput("no candidate adapters to choose from")
    everyone = sorted(i for fold in folds for i in fold)
    means = {c: s.mean(everyone, balanced=balanced) for c, s in scored.items()}
    chosen = top(means)
    estimate = means[chosen][0]
    if len(folds) > 1:
        first = scored[chosen]
        right = None if first.right is None else first.right.clone()
        margin = first.margin.clone()
        for f, fold in enumerate(folds):
            rest = [i for g, other in enumerate(folds) if g != f for i in other]
            pick = scored[best(scored, rest, balanced=balanced)]
            if right is not None and pick.right is not None:
                right[fold] = pick.right[fold]
            margin[fold] = pick.margin[fold]
        held = Scores(right, margin, first.gold)
        estimate = held.mean(everyone, balanced=balanced)[0]
    return Selection(
        chosen=chosen,
        scores={c: round(m[0], 4) for c, m in means.items()},
        margins={c: round(m[1], 4) for c, m in means.items()},
        estimate=round(estimate, 4),
        folds=len(folds),
    )
