"""SG-LoRA's local policy: a candidate mixture per request, voted by the nearest experts'
leave-one-out scores (generator/policy.py). Pure torch, no model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from generator.policy import (
    ANCHOR,
    NONE,
    LocalPolicy,
    candidate_key,
    fit_policy,
    parse_candidate,
)
from registry.errors import InvalidInput

CANDIDATES = ["k=1,tau=0.02", "k=4,tau=0.5", NONE]


def two_families() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Six experts in two tight families: in family A the nearest expert alone scores
    best, in family B every mixture hurts and no adapter scores best."""
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    jitter = torch.tensor([[0.0, 0.0, 0.1], [0.0, 0.0, 0.2], [0.0, 0.0, 0.3]])
    emb = torch.nn.functional.normalize(torch.cat([a + jitter, b + jitter]), dim=-1)  # (6, 3)
    acc = torch.tensor(
        [
            [0.9, 0.6, 0.5],
            [0.8, 0.6, 0.5],
            [0.9, 0.7, 0.5],
            [0.3, 0.4, 0.5],
            [0.2, 0.4, 0.5],
            [0.3, 0.45, 0.5],
        ]
    )
    return emb, acc, torch.log(acc)


def test_each_family_gets_what_worked_for_its_neighbours() -> None:
    emb, acc, ll = two_families()
    policy = fit_policy(CANDIDATES, acc, ll, emb)
    # going local scores better leave-one-out than the single global choice
    assert policy.m < 6 and policy.nested[f"m={policy.m}"] > policy.nested["m=6"]
    assert policy.fallback == "k=1,tau=0.02"  # the best mean over all six
    near_a = torch.nn.functional.normalize(torch.tensor([1.0, 0.05, 0.15]), dim=0)
    near_b = torch.nn.functional.normalize(torch.tensor([0.05, 1.0, 0.15]), dim=0)
    assert policy.choose(emb @ near_a) == "k=1,tau=0.02"
    assert policy.choose(emb @ near_b) == NONE
    # an expert never votes for itself when excluded: with m=1 its nearest other decides
    assert policy.choose(emb @ emb[0], exclude=0, m=1) == "k=1,tau=0.02"
    # every other expert voting is the global choice
    assert policy.choose(emb @ near_b, m=6) == policy.fallback


def test_a_uniformly_best_candidate_keeps_the_global_choice() -> None:
    emb, _, _ = two_families()
    acc = torch.tensor([[0.8, 0.6, 0.5]] * 6)
    policy = fit_policy(CANDIDATES, acc, torch.log(acc), emb)
    assert policy.m == 6  # ties go to the larger neighbourhood, the global choice last
    assert set(policy.nested.values()) == {0.8}


def test_ties_break_on_log_probability_then_the_global_best() -> None:
    emb, _, _ = two_families()
    acc = torch.full((6, 3), 0.5)
    ll = torch.full((6, 3), -0.7)
    ll[:, 1] = -0.5
    assert fit_policy(CANDIDATES, acc, ll, emb).choose(emb @ emb[0]) == "k=4,tau=0.5"
    flat = LocalPolicy(CANDIDATES, acc, torch.full((6, 3), -0.7), m=2, fallback=NONE)
    assert flat.choose(emb @ emb[0]) == NONE


def test_experts_without_a_scored_task_never_vote_and_json_round_trips() -> None:
    emb, acc, ll = two_families()
    acc, ll = acc.clone(), ll.clone()
    acc[0], ll[0] = float("nan"), float("nan")  # expert 0 had no task
    policy = fit_policy(CANDIDATES, acc, ll, emb)
    assert not bool(policy.scored[0]) and int(policy.scored.sum()) == 5
    # the query sits on expert 0, but only experts 1 and 2 (family A) can vote with m=2
    assert policy.choose(emb @ emb[0], m=2) == "k=1,tau=0.02"
    data = json.loads(json.dumps(policy.to_json()))  # JSON without NaN (PostgreSQL-safe)
    assert data["acc"][0] == [None, None, None]
    again = LocalPolicy.from_json(data)
    assert again.candidates == policy.candidates and again.m == policy.m
    assert math.isnan(float(again.acc[0, 0]))
    assert torch.allclose(again.acc[1:], policy.acc[1:], atol=1e-4)
    for q in emb:
        assert again.choose(emb @ q) == policy.choose(emb @ q)


def test_bad_policies_and_queries_are_clear_errors() -> None:
    emb, acc, ll = two_families()
    with pytest.raises(InvalidInput, match="one score per expert and candidate"):
        LocalPolicy(CANDIDATES[:2], acc, ll, m=2, fallback=NONE)
    with pytest.raises(InvalidInput, match="at least 1"):
        LocalPolicy(CANDIDATES, acc, ll, m=0, fallback=NONE)
    with pytest.raises(InvalidInput, match="not a mixture candidate"):
        LocalPolicy(["k=one"], acc[:, :1], ll[:, :1], m=1, fallback=NONE)
    with pytest.raises(InvalidInput, match="similarity to each of 6 experts"):
        fit_policy(CANDIDATES, acc, ll, emb).choose(torch.zeros(5))
    with pytest.raises(InvalidInput, match="at least 2 experts"):
        fit_policy(CANDIDATES, torch.full((6, 3), float("nan")), ll, emb)
    with pytest.raises(InvalidInput, match="not a local policy"):
        LocalPolicy.from_json({"candidates": CANDIDATES})
    assert parse_candidate("k=3,tau=0.1") == (3, 0.1, False, 1.0)
    assert parse_candidate(NONE) is None
    assert parse_candidate("anti,k=2,tau=0.5") == (2, 0.5, True, 1.0)
    for bad in ("anti,k=2", "anchor=0,k=1,tau=0.5", "anchor=1.5,k=1,tau=0.5", "anchor=0.5",
                "k=0,tau=0.5", "k=1,tau=0.5,x=1"):  # fmt: skip
        with pytest.raises(InvalidInput, match="not a mixture candidate"):
            parse_candidate(bad)
    with pytest.raises(InvalidInput, match="not blended"):
        candidate_key(2, 0.5, True, 0.5)


def test_anchor_candidates_round_trip_through_their_keys() -> None:
    for cand in [(1, 0.02, False, 1.0), (4, 0.5, True, 1.0), (8, 0.5, False, 0.5)]:
        key = candidate_key(*cand)
        assert parse_candidate(key) == cand
    assert candidate_key(8, 0.5, False, 0.5) == "anchor=0.5,k=8,tau=0.5"
    assert candidate_key(0, 0.0, False, 0.0) == ANCHOR == "anchor"
    assert parse_candidate(ANCHOR) == (0, 0.0, False, 0.0)  # the anchor alone, no experts
