"""Shares of the oracle's gain with bootstrap intervals over tasks and test examples.

Each held-out task t has a bare model's accuracy b_t, an oracle's o_t (the zoo
adapter trained on t) and a method's m_t, all on the same test examples. The
share of the oracle's gain is (m_t - b_t) / (o_t - b_t), averaged over tasks.

The intervals come from a two-level bootstrap: a resample draws the tasks
with replacement and, within each task, its test examples with replacement.
Every column of a task is scored on the same drawn examples, so the
difference between two methods is paired: its interval carries what the two
share (the task's difficulty, the examples drawn) only once. The normaliser
o_t - b_t stays at its measured value in every resample: the harness keeps
only tasks whose oracle gains at least 0.1 (``zoo.build.MIN_GAIN``), and
dividing by a resampled gain a few examples from zero would put the
interval's width in the oracle's noise rather than the method's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Outcomes:
    """One task's per-example correctness under every column ("base" and "oracle"
    among them), all on the same test examples in the same order."""

    task: str
    correct: Mapping[str, np.ndarray]  # column -> (n,) bool

    @property
    def n(self) -> int:
        return len(self.correct["base"])

    def accuracy(self, column: str) -> float:
        return float(np.mean(self.correct[column]))

    @property
    def gain(self) -> float:
        """The oracle's gain over the bare model on this task."""
        return self.accuracy("oracle") - self.accuracy("base")


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def percent(self) -> str:
        return f"{self.value:.1%} [{self.low:.1%}, {self.high:.1%}]"

    def points(self) -> str:
        """A difference of shares in percentage points, with its interval."""
        return f"{100 * self.value:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


@dataclass(frozen=True)
class Summary:
    tasks: int
    accuracy: dict[str, Estimate]  # mean accuracy
    of_oracle: dict[str, Estimate]  # mean of accuracy / oracle accuracy
    gain_share: dict[str, Estimate]  # mean of (m - b) / (o - b)
    differences: dict[tuple[str, str], Estimate]  # (a, b) -> gain_share[a] - gain_share[b]

    def to_json(self) -> dict[str, object]:
        return {
            "tasks": self.tasks,
            "accuracy": {c: e.to_json() for c, e in self.accuracy.items()},
            "of_oracle": {c: e.to_json() for c, e in self.of_oracle.items()},
            "gain_share": {c: e.to_json() for c, e in self.gain_share.items()},
            "differences": [
                {"method": a, "against": b, **e.to_json()} for (a, b), e in self.differences.items()
            ],
        }


def gain_shares(outcomes: Sequence[Outcomes], column: str) -> list[float]:
    """Per task (m - b) / (o - b) of ``column`` (tasks whose oracle gains nothing are
    not defined; the caller filters them)."""
    return [(o.accuracy(column) - o.accuracy("base")) / o.gain for o in outcomes]


def summarise(
    outcomes: Sequence[Outcomes],
    columns: Sequence[str],
    pairs: Sequence[tuple[str, str]] = (),
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Summary:
    """Point estimates and 95 % percentile intervals of every column's mean accuracy,
    share of the oracle's accuracy and share of its gain, and of the differences in gain
    share of ``pairs`` (method, against)."""
    if not outcomes:
        raise ValueError("no tasks to summarise")
    if any(o.gain <= 0 for o in outcomes):
        raise ValueError("a task whose oracle does not beat the bare model has no gain share")
    rng = np.random.default_rng(seed)
    n_tasks = len(outcomes)
    # (T, R): each task's per-resample accuracy under every column, on shared example draws
    acc: dict[str, np.ndarray] = {c: np.empty((n_tasks, resamples)) for c in {*columns, "base"}}
    for t, o in enumerate(outcomes):
        draw = rng.integers(0, o.n, size=(resamples, o.n))
        for c in acc:
            acc[c][t] = o.correct[c][draw].mean(axis=1)
    picks = rng.integers(0, n_tasks, size=(resamples, n_tasks))  # tasks drawn per resample
    gain = np.array([o.gain for o in outcomes])
    oracle = np.array([o.accuracy("oracle") for o in outcomes])
    base = np.array([o.accuracy("base") for o in outcomes])

    def estimate(point: np.ndarray, boot: np.ndarray) -> Estimate:
        return _interval(float(point.mean()), boot, picks)

    def share(values: np.ndarray, base_values: np.ndarray) -> np.ndarray:
        normaliser = gain if values.ndim == 1 else gain[:, None]
        return (values - base_values) / normaliser

    accuracy, of_oracle, gains = {}, {}, {}
    point = {c: np.array([o.accuracy(c) for o in outcomes]) for c in acc}
    for c in columns:
        accuracy[c] = estimate(point[c], acc[c])
        of_oracle[c] = estimate(point[c] / oracle, acc[c] / oracle[:, None])
        gains[c] = estimate(share(point[c], base), share(acc[c], acc["base"]))
    differences = {}
    for a, b in pairs:
        differences[(a, b)] = estimate(share(point[a], point[b]), share(acc[a], acc[b]))
    return Summary(n_tasks, accuracy, of_oracle, gains, differences)


def difference_over_draws(
    draws: Sequence[Sequence[float]],
    against: Sequence[float],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Estimate:
    """Mean over tasks of a method's accuracy minus a fixed column's (``against``, one
    value a task), when the method was scored on several independent draws of examples
    per task: a resample draws the tasks with replacement and, within each task, its
    draws with replacement. ``against`` sees no examples, so it is the same in every
    draw and stays at its measured value."""
    if not draws or len(draws) != len(against) or any(len(d) == 0 for d in draws):
        raise ValueError("every task needs at least one draw and one value to compare with")
    rng = np.random.default_rng(seed)
    scored = [np.asarray(d, dtype=float) for d in draws]
    inner = np.stack(
        [a[rng.integers(0, len(a), size=(resamples, len(a)))].mean(axis=1) for a in scored]
    )
    per_task = inner - np.asarray(against, dtype=float)[:, None]  # (T, R)
    picks = rng.integers(0, len(scored), size=(resamples, len(scored)))
    point = float(np.mean([a.mean() - b for a, b in zip(scored, against, strict=True)]))
    return _interval(point, per_task, picks)


def _interval(point: float, per_task: np.ndarray, picks: np.ndarray) -> Estimate:
    """``point`` with the percentile interval of the resampled means over tasks:
    ``per_task`` is (T, R), each task's value in each resample, and ``picks`` (R, T) the
    tasks each resample draws."""
    means = per_task[picks, np.arange(picks.shape[0])[:, None]].mean(axis=1)
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(point, float(low), float(high))
