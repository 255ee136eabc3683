"""Choosing SG-LoRA's K and tau by what the mixture *does* on the training tasks.

The weight-space criterion (``training.choose_k_tau``) asks which mixture of
other experts lies closest to an expert's own weights; broad mixtures win it
because averaging shrinks the error of every coordinate, yet an average of
several adapters often works worse on the task than the single nearest one.
Here each training expert t plays a new task: its leave-one-out mixture
(top-K *other* experts, softmax(s / tau)) is attached to the base model and
scored by rank classification on a few of t's own examples. The (K, tau) with
the best mean accuracy over the tasks wins (ties: the higher mean
log-probability of the right label).

The similarity gate is chosen from the same scores at no extra cost: with
gate g, a task whose nearest other expert leads the runner-up by more than g
takes the K=1 score, any other task the (K, tau) mixture's. Gated candidates
compete with the plain ones (equal accuracy: the higher mean log-probability,
then the plain one). Held-out tasks never reach this code: the caller passes
the training experts' tasks only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from generator.experts import ExpertBank
from generator.fit.sg import K_GRID, KTauChoice, TaskCheck
from generator.hypernet.layout import Rows
from generator.hypernet.mixture import Mixture, guided_mixture, softmax_weights
from generator.tasks.evaluation import Evaluator
from generator.tasks.task import Example, Task
from registry.errors import InvalidInput
from registry.lora_spec import Adapter

TAU_GRID = (0.02, 0.1, 0.5)  # coarser than training's: every candidate costs a model pass
WEIGHT_FLOOR = 5e-4  # mixture weights below this do not make a mixture distinct
GATE_GRID = (0.02, 0.05, 0.1, 0.2)  # lead in cosine similarity of the nearest expert


class Candidate(NamedTuple):
    """One mixture setting selection scores: the top-``k`` experts at temperature ``tau``."""

    k: int
    tau: float

    @property
    def key(self) -> str:
        return f"k={self.k},tau={self.tau}"

    @classmethod
    def parse(cls, key: str) -> Candidate:
        """The candidate of a "k=K,tau=T" key (the keys of a generator's ``k_tau_grid``)."""
        try:
            parts = dict(p.split("=", 1) for p in key.split(","))
            if set(parts) != {"k", "tau"} or int(parts["k"]) < 1:
                raise ValueError(key)
            return cls(int(parts["k"]), float(parts["tau"]))
        except ValueError as exc:
            raise InvalidInput(f"not a mixture candidate: {key!r}") from exc


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
    gates: Sequence[float] = GATE_GRID,
    examples: int = 16,
    on_task: Callable[[int, int], None] | None = None,
) -> KTauChoice:
    """K, tau and gate by the mean accuracy of the leave-one-out mixtures; the choice's
    ``grid`` scores every candidate, its ``gate_grid`` every gated one (a lead ``gate``
    from ``gates``)."""
    if len(bank) < 2:
        raise InvalidInput("SG-LoRA needs at least 2 experts")
    usable = {i: t for i, t in tasks.items() if t.is_classification and t.train}
    if not usable:
        raise InvalidInput("choosing K and tau by task accuracy needs the experts' tasks")
    if examples < 1:
        raise InvalidInput(f"examples must be at least 1, got {examples}")
    columns = [
        Candidate(k, tau) for k in ks if k <= len(bank) - 1 for tau in (taus if k > 1 else taus[:1])
    ]
    if not columns:
        raise InvalidInput(f"no K in {tuple(ks)} fits {len(bank)} experts")
    rows = sorted(usable)
    acc_t = torch.full((len(bank), len(columns)), float("nan"))  # (E, C)
    ll_t = torch.full((len(bank), len(columns)), float("nan"))
    leads: list[float] = []  # per task: the nearest other expert's lead over the runner-up
    for n, t in enumerate(rows):
        task = usable[t]
        chosen = spread(task.train, examples)
        seen: dict[tuple[object, ...], tuple[float, float]] = {}
        _, top2 = bank.nearest(bank.embeddings[t], 2, exclude=t)
        leads.append(float(top2[0] - top2[1]) if len(top2) > 1 else float("inf"))
        for c, cand in enumerate(columns):
            idx, sims = bank.nearest(bank.embeddings[t], cand.k, exclude=t)
            w = softmax_weights(sims, cand.tau)
            # near-identical mixtures (a low tau puts everything on the top one) score once
            key = tuple(
                (i, round(float(x), 3)) for i, x in zip(idx, w, strict=True) if x >= WEIGHT_FLOOR
            )
            if key not in seen:
                mixture = candidate_mixture(bank, t, cand)
                weights = bank.layout.unflatten(mixture.mean)
                seen[key] = _score(evaluator, task, chosen, (bank.template, weights))
            acc_t[t, c], ll_t[t, c] = seen[key]
        if on_task:
            on_task(n + 1, len(usable))

    def mean(v: list[float]) -> float:
        return sum(v) / len(v)

    acc = {c: acc_t[rows, i].tolist() for i, c in enumerate(columns)}
    loglik = {c: ll_t[rows, i].tolist() for i, c in enumerate(columns)}
    # candidates (mixture, gate) -> (mean accuracy, mean log-probability); the ungated
    # ones first, so that ties keep them
    scored: dict[tuple[Candidate, float | None], tuple[float, float]] = {
        (c, None): (mean(acc[c]), mean(loglik[c])) for c in columns
    }
    single = next((c for c in columns if c.k == 1), None)
    if single is not None:
        for cand in columns:
            if cand == single:
                continue
            for g in gates:
                pick = [lead > g for lead in leads]
                gated_acc = [
                    a1 if p else a for a1, a, p in zip(acc[single], acc[cand], pick, strict=True)
                ]
                gated_ll = [
                    x1 if p else x
                    for x1, x, p in zip(loglik[single], loglik[cand], pick, strict=True)
                ]
                scored[(cand, g)] = (mean(gated_acc), mean(gated_ll))
    best, best_gate = max(scored, key=lambda c: (round(scored[c][0], 6), scored[c][1]))
    return KTauChoice(
        k=best.k,
        tau=best.tau,
        by="task",
        grid={c.key: round(scored[(c, None)][0], 4) for c in columns},
        gate=best_gate,
        gate_grid={
            f"{c.key},gate={g}": round(v[0], 4) for (c, g), v in scored.items() if g is not None
        },
        scores={
            usable[t].name: {c.key: round(float(acc_t[t, i]), 4) for i, c in enumerate(columns)}
            for t in rows
        },
    )


def candidate_mixture(bank: ExpertBank, t: int, cand: Candidate) -> Mixture:
    """Candidate ``cand``'s leave-one-out mixture for expert ``t`` (the other experts')."""
    idx, sims = bank.nearest(bank.embeddings[t], cand.k, exclude=t)
    experts = [bank.experts[i] for i in idx]
    return guided_mixture(
        sims, [e.mean for e in experts], [e.var for e in experts], k=cand.k, tau=cand.tau
    )[1]


def task_checker(
    bank: ExpertBank, tasks: dict[int, Task], evaluator: Evaluator, *, examples: int = 32
) -> TaskCheck:
    """Accuracy of a flattened adapter on expert t's own task (None: t has none)."""

    def check(t: int, rows: Rows) -> float | None:
        task = tasks.get(t)
        if task is None or not task.is_classification or not task.train:
            return None
        adapter = (bank.template, bank.layout.unflatten(rows))
        return _score(evaluator, task, spread(task.train, examples), adapter)[0]

    return check


def _score(
    evaluator: Evaluator,
    task: Task,
    examples: Sequence[Example],
    adapter: Adapter | None,  # None: the bare model
) -> tuple[float, float]:
    """Accuracy and mean log-probability (normalised over the labels) of the right label."""
    scores = evaluator.label_scores(task, adapter, examples=examples)  # (N, L)
    gold = torch.tensor([task.labels.index(e.output) for e in examples])
    logp = torch.log_softmax(scores, dim=-1)[torch.arange(len(gold)), gold]  # (N,)
    accuracy = (scores.argmax(-1) == gold).float().mean().item()
    return accuracy, logp.mean().item()
