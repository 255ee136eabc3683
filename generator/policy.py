"""SG-LoRA's mixture chosen per request, from what worked for the nearest training tasks.

One (K, tau) chosen over every training task averages over families that want
opposite things: where a new task has a sibling expert asking the same
question about another category (a WordNet class, a language pair), the
sibling alone is the best adapter; where the siblings' categories are the
negatives of the new task's (one topic against the rest of one corpus), every
mixture of them pushes the base model towards the wrong answer.

``selection.choose_k_tau_by_task`` already scores each candidate mixture
leave-one-out on every training expert's own task. A local policy keeps that
table (experts x candidates) in the checkpoint. For a description, the M
experts nearest to it by description cosine vote with their scores: the
candidate with the best mean accuracy wins (ties: the higher mean
log-probability of the right label, then the candidate that was best over all
tasks). One candidate is ``none``, no adapter at all (the base model as it
is), which wins where every mixture hurt the nearest tasks. Others mirror a
mixture through the mean g of all experts, 2 g - mu*: where the nearest
experts ask for the other categories of one corpus ("is this about sport?"
against "is this about technology?"), mu* answers yes to the wrong texts, g
keeps what every adapter shares (the answer format) and the mirror turns the
siblings' "yes" into "no" (task negation in weight space). Like every
candidate it is served only where it scored best on the nearest tasks.

M is chosen by nested leave-one-out at no model cost: each training expert
plays the new task, its M nearest *other* experts choose, and the candidate
chosen is scored by the expert's own row of the table. M = all other experts
is the single global choice, so the policy only goes local when that scored
better. Pure torch: no registry, no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from registry.errors import InvalidInput

NONE = "none"  # the candidate that is no adapter
ANTI = "anti,"  # prefix of a mirrored mixture's key
ANCHOR = "anchor"  # the multi-task anchor alone; "anchor=L,k=K,tau=T": blended with it
M_GRID = (1, 2, 3, 5, 8)  # neighbourhood sizes tried, besides every other expert


class Candidate(NamedTuple):
    k: int  # 0: no experts (the anchor alone)
    tau: float
    anti: bool = False  # 2 g - mu*: away from the experts, from the mean g of all of them
    lam: float = 1.0  # < 1: lam mu* + (1 - lam) a, pulled towards the anchor a


def candidate_key(k: int, tau: float, anti: bool = False, lam: float = 1.0) -> str:
    if k == 0:
        return ANCHOR
    if anti and lam < 1.0:
        raise InvalidInput("a mirrored mixture is not blended with the anchor")
    key = f"{ANTI}k={k},tau={tau}" if anti else f"k={k},tau={tau}"
    return f"{ANCHOR}={lam},{key}" if lam < 1.0 else key


def parse_candidate(key: str) -> Candidate | None:
    """The mixture of a "k=K,tau=T", "anti,k=K,tau=T" or "anchor=L,k=K,tau=T"
    candidate, or the anchor alone ("anchor"); None for ``none``."""
    if key == NONE:
        return None
    if key == ANCHOR:
        return Candidate(0, 0.0, False, 0.0)
    anti = key.startswith(ANTI)
    try:
        parts = dict(p.split("=", 1) for p in key.removeprefix(ANTI).split(","))
        lam = float(parts.pop(ANCHOR, 1.0))
        if not 0.0 < lam <= 1.0 or set(parts) != {"k", "tau"} or int(parts["k"]) < 1:
            raise ValueError(key)
        return Candidate(int(parts["k"]), float(parts["tau"]), anti, lam)
    except (KeyError, ValueError) as exc:
        raise InvalidInput(f"not a mixture candidate: {key!r}") from exc


@dataclass(frozen=True)
class LocalPolicy:
    candidates: list[str]  # candidate keys (``candidate_key``) or "none"
    acc: torch.Tensor  # (E, C) leave-one-out accuracy; NaN rows: experts without a task
    loglik: torch.Tensor  # (E, C) mean log-probability of the right label
    m: int  # neighbourhood size
    fallback: str  # the candidate with the best mean over every scored expert
    nested: dict[str, float] = field(default_factory=dict)  # "m=M" -> nested LOO accuracy

    def __post_init__(self) -> None:
        E, C = self.acc.shape
        if len(self.candidates) != C or self.loglik.shape != (E, C):
            raise InvalidInput("a local policy needs one score per expert and candidate")
        if self.m < 1:
            raise InvalidInput(f"the neighbourhood size must be at least 1, got {self.m}")
        for key in self.candidates:
            parse_candidate(key)

    @property
    def scored(self) -> torch.Tensor:
        """(E,) bool: experts whose task was scored."""
        return ~torch.isnan(self.acc).any(1)

    def choose(
        self, sims: torch.Tensor, *, exclude: int | None = None, m: int | None = None
    ) -> str:
        """The candidate for a query with (E,) description cosines ``sims`` to every
        expert (``exclude``: an expert that may not vote, the query's own)."""
        E = self.acc.shape[0]
        if sims.shape != (E,):
            raise InvalidInput(
                f"need the similarity to each of {E} experts, got {tuple(sims.shape)}"
            )
        s = sims.float().clone()
        s[~self.scored] = -float("inf")
        if exclude is not None:
            s[exclude] = -float("inf")
        voters = int(torch.isfinite(s).sum())
        size = min(self.m if m is None else m, voters)
        if size == 0:
            return self.fallback
        top = torch.topk(s, size).indices  # (M,)
        acc, ll = self.acc[top].mean(0), self.loglik[top].mean(0)  # (C,), (C,)
        best = max(
            range(len(self.candidates)),
            key=lambda c: (
                round(float(acc[c]), 6),
                float(ll[c]),
                self.candidates[c] == self.fallback,
            ),
        )
        return self.candidates[best]

    def to_json(self) -> dict[str, Any]:
        def rows(t: torch.Tensor) -> list[list[float | None]]:
            return [[None if x != x else round(float(x), 4) for x in r] for r in t.tolist()]

        return {
            "candidates": list(self.candidates),
            "acc": rows(self.acc),
            "loglik": rows(self.loglik),
            "m": self.m,
            "fallback": self.fallback,
            "nested": dict(self.nested),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalPolicy:
        def tensor(rows: list[list[float | None]]) -> torch.Tensor:
            return torch.tensor(
                [[float("nan") if x is None else float(x) for x in r] for r in rows]
            ).reshape(len(rows), len(data["candidates"]))

        try:
            return cls(
                candidates=[str(c) for c in data["candidates"]],
                acc=tensor(data["acc"]),
                loglik=tensor(data["loglik"]),
                m=int(data["m"]),
                fallback=str(data["fallback"]),
                nested={str(k): float(v) for k, v in data.get("nested", {}).items()},
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise InvalidInput(f"not a local policy: {exc}") from exc


def fit_policy(
    candidates: Sequence[str],
    acc: torch.Tensor,  # (E, C)
    loglik: torch.Tensor,  # (E, C)
    embeddings: torch.Tensor,  # (E, D) unit-norm description embeddings
    *,
    ms: Sequence[int] = M_GRID,
) -> LocalPolicy:
    """The policy with the neighbourhood size of the best nested leave-one-out accuracy
    (ties: the larger M, every other expert, the global choice, winning the last tie)."""
    E = acc.shape[0]
    scored = ~torch.isnan(acc).any(1)
    n = int(scored.sum())
    if n < 2:
        raise InvalidInput("a local policy needs at least 2 experts with scored tasks")
    mean_acc = acc[scored].mean(0)
    mean_ll = loglik[scored].mean(0)
    fallback = candidates[
        max(range(len(candidates)), key=lambda c: (round(float(mean_acc[c]), 6), float(mean_ll[c])))
    ]
    sims = embeddings @ embeddings.T  # (E, E)
    sizes = sorted({m for m in ms if 1 <= m < n - 1} | {n})  # n: every other expert
    nested: dict[str, float] = {}
    best_m, best_score = n, -1.0
    for m in sizes:
        probe = LocalPolicy(list(candidates), acc, loglik, m, fallback)
        got = [
            float(acc[t, candidates.index(probe.choose(sims[t], exclude=t))])
            for t in range(E)
            if scored[t]
        ]
        score = sum(got) / len(got)
        nested[f"m={m}"] = round(score, 4)
        if round(score, 6) >= round(best_score, 6):
            best_m, best_score = m, score
    return LocalPolicy(list(candidates), acc, loglik, best_m, fallback, nested)
