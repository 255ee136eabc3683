"""Choosing SG-LoRA's K and tau by what the mixture *does* on the training tasks.

The weight-space criterion (``training.choose_k_tau``) asks which mixture of
other experts lies closest to an expert's own weights; broad mixtures win it
because averaging shrinks the error of every coordinate, yet an average of
several adapters often works worse on the task than the single nearest one.
Here each training expert t plays a new task: its leave-one-out mixture
(top-K *other* experts, softmax(s / tau)) is attached to the base model and
scored by rank classification on a few of t's own examples. The (K, tau) with
the best mean accuracy over the tasks wins (ties: the higher mean
log-probability of the right label). Held-out tasks never reach this code:
the caller passes the training experts' tasks only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from generator.evaluation import Evaluator
from generator.experts import ExpertBank
from generator.guidance import softmax_weights
from generator.lora_trainer import Tensors
from generator.tasks import Example, Task
from generator.training import K_GRID
from registry.errors import InvalidInput

TAU_GRID = (0.02, 0.1, 0.5)  # coarser than training's: every candidate costs a model pass
WEIGHT_FLOOR = 5e-4  # mixture weights below this do not make a mixture distinct


def spread(examples: Sequence[Example], n: int) -> list[Example]:
    """``n`` examples evenly spaced over ``examples`` (all of them when fewer)."""
    if len(examples) <= n:
        return list(examples)
    step = len(examples) / n
    return [examples[int(i * step)] for i in range(n)]


def choose_k_tau_by_task(
    bank: ExpertBank,
    tasks: dict[int, Task],  # expert index -> its (training) task
    evaluator: Evaluator,
    *,
    ks: Sequence[int] = K_GRID,
    taus: Sequence[float] = TAU_GRID,
    examples: int = 16,
    on_task: Callable[[int, int], None] | None = None,
) -> tuple[int, float, dict[str, float]]:
    """(K, tau, {"k=..,tau=..": mean accuracy}) over the leave-one-out mixtures."""
    if len(bank) < 2:
        raise InvalidInput("SG-LoRA needs at least 2 experts")
    usable = {i: t for i, t in tasks.items() if t.is_classification and t.train}
    if not usable:
        raise InvalidInput("choosing K and tau by task accuracy needs the experts' tasks")
    if examples < 1:
        raise InvalidInput(f"examples must be at least 1, got {examples}")
    grid = [(k, tau) for k in ks if k <= len(bank) - 1 for tau in (taus if k > 1 else taus[:1])]
    if not grid:
        raise InvalidInput(f"no K in {tuple(ks)} fits {len(bank)} experts")
    acc: dict[tuple[int, float], list[float]] = {c: [] for c in grid}
    loglik: dict[tuple[int, float], list[float]] = {c: [] for c in grid}
    for n, (t, task) in enumerate(sorted(usable.items())):
        chosen = spread(task.train, examples)
        seen: dict[tuple[tuple[int, float], ...], tuple[float, float]] = {}
        for k, tau in grid:
            idx, sims = bank.nearest(bank.embeddings[t], k, exclude=t)
            w = softmax_weights(sims, tau)
            # near-identical mixtures (a low tau puts everything on the top one) score once
            key = tuple(
                (i, round(float(x), 3)) for i, x in zip(idx, w, strict=True) if x >= WEIGHT_FLOOR
            )
            if key not in seen:
                weights = bank.layout.unflatten(bank.mixture(idx, sims, tau).mean)
                seen[key] = _score(evaluator, task, chosen, (bank.template, weights))
            a, ll = seen[key]
            acc[(k, tau)].append(a)
            loglik[(k, tau)].append(ll)
        if on_task:
            on_task(n + 1, len(usable))
    mean_acc = {c: sum(v) / len(v) for c, v in acc.items()}
    mean_ll = {c: sum(v) / len(v) for c, v in loglik.items()}
    best = max(grid, key=lambda c: (round(mean_acc[c], 6), mean_ll[c]))
    table = {f"k={k},tau={tau}": round(mean_acc[(k, tau)], 4) for k, tau in grid}
    return best[0], best[1], table


def _score(
    evaluator: Evaluator,
    task: Task,
    examples: Sequence[Example],
    adapter: tuple[dict[str, Any], Tensors],
) -> tuple[float, float]:
    """Accuracy and mean log-probability (normalised over the labels) of the right label."""
    scores = evaluator.label_scores(task, adapter, examples=examples)  # (N, L)
    gold = torch.tensor([task.labels.index(e.output) for e in examples])
    logp = torch.log_softmax(scores, dim=-1)[torch.arange(len(gold)), gold]  # (N,)
    accuracy = (scores.argmax(-1) == gold).float().mean().item()
    return accuracy, logp.mean().item()
