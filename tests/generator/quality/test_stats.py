"""Shares of the oracle's gain and their two-level bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from generator.quality.stats import Outcomes, difference_over_draws, gain_shares, summarise


def task(name: str, rng: np.random.Generator, n: int, **p: float) -> Outcomes:
    """Independent per-example outcomes with the given success rate per column."""
    return Outcomes(name, {c: rng.random(n) < rate for c, rate in p.items()})


def test_point_estimates_are_the_plain_means_of_the_per_task_figures() -> None:
    a = Outcomes(
        "a",
        {
            "base": np.array([1, 0, 0, 0], bool),
            "m": np.array([1, 1, 0, 0], bool),
            "oracle": np.array([1, 1, 1, 0], bool),
        },
    )
    b = Outcomes(
        "b",
        {
            "base": np.array([0, 0, 0, 0, 1], bool),
            "m": np.array([1, 1, 1, 1, 1], bool),
            "oracle": np.array([1, 1, 1, 0, 1], bool),
        },
    )
    s = summarise([a, b], ["base", "m", "oracle"], [("m", "base")], resamples=200)
    assert gain_shares([a, b], "m") == pytest.approx([0.5, 4 / 3])
    assert s.gain_share["m"].value == pytest.approx((0.5 + 4 / 3) / 2)
    assert s.gain_share["base"].value == 0 and s.gain_share["oracle"].value == pytest.approx(1)
    assert s.accuracy["m"].value == pytest.approx((0.5 + 1.0) / 2)
    assert s.of_oracle["m"].value == pytest.approx((0.5 / 0.75 + 1.0 / 0.8) / 2)
    assert s.differences[("m", "base")].value == pytest.approx(s.gain_share["m"].value)
    for est in [*s.gain_share.values(), *s.accuracy.values(), *s.differences.values()]:
        assert est.low <= est.value <= est.high


def test_a_column_against_itself_differs_by_exactly_nothing() -> None:
    rng = np.random.default_rng(1)
    tasks = [task(f"t{i}", rng, 80, base=0.5, m=0.7, oracle=0.8) for i in range(6)]
    tasks = [Outcomes(t.task, {**t.correct, "copy": t.correct["m"]}) for t in tasks]
    s = summarise(tasks, ["base", "m", "copy"], [("m", "copy"), ("m", "base")])
    same = s.differences[("m", "copy")]
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    # the bare model against itself: every resample's share is 0
    assert (s.gain_share["base"].low, s.gain_share["base"].high) == (0.0, 0.0)
    assert s.differences[("m", "base")].low > 0  # 0.7 against 0.5 on 480 examples


def test_pairing_narrows_the_difference_of_two_close_methods() -> None:
    """Two methods that agree on most examples: the paired interval of their difference
    is far narrower than the two intervals side by side suggest."""
    rng = np.random.default_rng(2)
    tasks = []
    for i in range(8):
        t = task(f"t{i}", rng, 100, base=0.5, oracle=0.9, m=0.7)
        flip = rng.random(100) < 0.05
        tasks.append(Outcomes(t.task, {**t.correct, "near": t.correct["m"] ^ flip}))
    s = summarise(tasks, ["m", "near"], [("m", "near")])
    diff = s.differences[("m", "near")]
    separate = s.gain_share["m"].high - s.gain_share["m"].low
    assert diff.high - diff.low < separate / 2


def test_the_interval_covers_the_true_share_about_as_often_as_it_says() -> None:
    """Tasks with known rates: the true mean share is (0.65 - 0.5) / (0.8 - 0.5) = 0.5 on
    every task; the measured normaliser is the sample's, so coverage is near, not at, 95 %."""
    rng = np.random.default_rng(3)
    hits = 0
    runs = 60
    for r in range(runs):
        tasks = [task(f"t{i}", rng, 100, base=0.5, m=0.65, oracle=0.8) for i in range(12)]
        tasks = [t for t in tasks if t.gain > 0]
        est = summarise(tasks, ["m"], resamples=400, seed=r).gain_share["m"]
        hits += est.low <= 0.5 <= est.high
    assert hits / runs >= 0.8


def test_tasks_without_an_oracle_gain_and_empty_input_are_refused() -> None:
    flat = Outcomes("flat", {c: np.array([1, 0], bool) for c in ("base", "m", "oracle")})
    with pytest.raises(ValueError, match="does not beat the bare model"):
        summarise([flat], ["m"])
    with pytest.raises(ValueError, match="no tasks"):
        summarise([], ["m"])


def test_a_difference_over_draws_keeps_the_fixed_column_and_resamples_the_draws() -> None:
    """One task whose draws score 0.6 and 0.8 against a fixed 0.6: the point is +0.1 and
    the interval runs from both draws at 0.6 to both at 0.8."""
    diff = difference_over_draws([[0.6, 0.8]], [0.6])
    assert diff.value == pytest.approx(0.1)
    assert diff.low == pytest.approx(0.0) and diff.high == pytest.approx(0.2)
    # draws that agree within each task: the spread is the tasks' (+0.2 and -0.1)
    tasks = difference_over_draws([[0.7, 0.7], [0.5]], [0.5, 0.6])
    assert tasks.value == pytest.approx(0.05)
    assert tasks.low == pytest.approx(-0.1) and tasks.high == pytest.approx(0.2)


@pytest.mark.parametrize("draws, against", [([], []), ([[0.5]], []), ([[0.5], []], [0.1, 0.2])])
def test_a_difference_over_draws_needs_a_draw_and_a_value_for_every_task(
    draws: list[list[float]], against: list[float]
) -> None:
    with pytest.raises(ValueError, match="at least one draw"):
        difference_over_draws(draws, against)
