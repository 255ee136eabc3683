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

The similarity gates are chosen from the same scores at no extra cost: with
gate g, a task whose nearest other expert leads the runner-up by more than g
takes the K=1 score, any other task the (K, tau) mixture's; with the floor s
(``gate_sim``), a task whose nearest other expert's description is at least s
similar takes the K=1 score. Gated candidates compete with the plain ones
(equal accuracy: the higher mean log-probability, then the plain one).
Held-out tasks never reach this code: the caller passes the training experts'
tasks only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from generator.anchor import AnchorSet
from generator.evaluation import Evaluator
from generator.experts import ExpertBank
from generator.guidance import Anchor, Mixture, guided_mixture, mirror, softmax_weights
from generator.lora_trainer import Tensors
from generator.policy import NONE, Candidate, candidate_key, fit_policy
from generator.tasks import Example, Task
from generator.training import K_GRID, KTauChoice, TaskCheck
from registry.errors import InvalidInput

TAU_GRID = (0.02, 0.1, 0.5)  # coarser than training's: every candidate costs a model pass
WEIGHT_FLOOR = 5e-4  # mixture weights below this do not make a mixture distinct
GATE_GRID = (0.02, 0.05, 0.1, 0.2)  # lead in cosine similarity of the nearest expert
# floors on the nearest expert's own cosine similarity (gate_sim)
GATE_SIM_GRID = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
ANTI_KS = (1, 2, 4, 8)  # mirrored mixtures a local policy may choose, at ANTI_TAU
ANTI_TAU = 0.5
# mixtures blended with the multi-task anchor (K, tau), at ANCHOR_LAM: the nearest
# expert, a few and a broad set; the anchor alone is a candidate too
ANCHOR_MIXTURES = ((1, 0.02), (4, 0.5), (8, 0.5))
ANCHOR_LAM = 0.5
LEAD, FLOOR = "gate", "gate_sim"  # the two gates, named as in the config


class Gate(NamedTuple):
    kind: str  # LEAD: the nearest leads the runner-up by more than value; FLOOR: is >= value
    value: float


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
    gate_sims: Sequence[float] = GATE_SIM_GRID,
    examples: int = 16,
    local: bool = False,
    anti_ks: Sequence[int] = ANTI_KS,
    anchors: AnchorSet | None = None,
    on_task: Callable[[int, int], None] | None = None,
) -> KTauChoice:
    """K, tau and gate by the mean accuracy of the leave-one-out mixtures; the choice's
    ``grid`` scores every candidate, its ``gate_grid`` every gated one (a lead ``gate``
    from ``gates`` or a similarity floor ``gate_sim`` from ``gate_sims``). With
    ``anchors``, the multi-task anchor alone and mixtures blended with it
    (``ANCHOR_MIXTURES`` at ``ANCHOR_LAM``) are candidates too, each expert scored
    with the anchor of its fold (one that never saw its task). With ``local``,
    mirrored mixtures (K in ``anti_ks``) and the bare model are scored too and the
    choice carries a local policy (``generator.policy``) that picks a candidate per
    request from the table."""
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
    # the table's columns: the grid, the anchor's candidates, then (local only) mirrored
    # mixtures and no adapter
    columns = [Candidate(k, tau) for k, tau in grid]
    if anchors is not None:
        columns.append(Candidate(0, 0.0, False, 0.0))
        columns += [
            Candidate(k, tau, False, ANCHOR_LAM) for k, tau in ANCHOR_MIXTURES if k <= len(bank) - 1
        ]
    if local:
        columns += [Candidate(k, ANTI_TAU, True) for k in anti_ks if k <= len(bank) - 1]
    nan = float("nan")
    C = len(columns) + local  # the last column, when local: no adapter
    acc_t = torch.full((len(bank), C), nan)  # (E, C) per expert and candidate
    ll_t = torch.full((len(bank), C), nan)
    leads: list[float] = []  # per task: the nearest other expert's lead over the runner-up
    tops: list[float] = []  # per task: the nearest other expert's similarity
    for n, (t, task) in enumerate(sorted(usable.items())):
        chosen = spread(task.train, examples)
        seen: dict[tuple[object, ...], tuple[float, float]] = {}
        _, top2 = bank.nearest(bank.embeddings[t], 2, exclude=t)
        leads.append(float(top2[0] - top2[1]) if len(top2) > 1 else float("inf"))
        tops.append(float(top2[0]))
        anchor = anchors.for_expert(t) if anchors is not None else None
        for c, cand in enumerate(columns):
            idx, sims = bank.nearest(bank.embeddings[t], cand.k, exclude=t)
            w = softmax_weights(sims, cand.tau) if cand.k else torch.zeros(0)
            # near-identical mixtures (a low tau puts everything on the top one) score once
            key = (cand.anti, cand.lam) + tuple(
                (i, round(float(x), 3)) for i, x in zip(idx, w, strict=True) if x >= WEIGHT_FLOOR
            )
            if key not in seen:
                mixture = candidate_mixture(bank, t, cand, anchor)
                weights = bank.layout.unflatten(mixture.mean)
                seen[key] = _score(evaluator, task, chosen, (bank.template, weights))
            acc_t[t, c], ll_t[t, c] = seen[key]
        if local:
            acc_t[t, -1], ll_t[t, -1] = _score(evaluator, task, chosen, None)
        if on_task:
            on_task(n + 1, len(usable))

    rows = sorted(usable)

    def mean(v: list[float]) -> float:
        return sum(v) / len(v)

    # the global candidates: every column but the mirrored ones (and no adapter)
    plain = [c for c in columns if not c.anti]
    acc = {c: acc_t[rows, columns.index(c)].tolist() for c in plain}
    loglik = {c: ll_t[rows, columns.index(c)].tolist() for c in plain}
    # candidates (mixture, gate) -> (mean accuracy, mean log-probability), the gate
    # None (ungated; first, so that ties keep them), a LEAD or a FLOOR Gate
    scored: dict[tuple[Candidate, Gate | None], tuple[float, float]] = {
        (c, None): (mean(acc[c]), mean(loglik[c])) for c in plain
    }
    single = next((c for c in plain if c.k == 1 and c.lam == 1.0), None)
    if single is not None:
        gatings = [(Gate(LEAD, g), [lead > g for lead in leads]) for g in gates]
        gatings += [(Gate(FLOOR, s), [top >= s for top in tops]) for s in gate_sims]
        for cand in plain:
            if cand == single:
                continue
            for gating, pick in gatings:
                gated_acc = [
                    x1 if p else x for x1, x, p in zip(acc[single], acc[cand], pick, strict=True)
                ]
                gated_ll = [
                    x1 if p else x
                    for x1, x, p in zip(loglik[single], loglik[cand], pick, strict=True)
                ]
                scored[(cand, gating)] = (mean(gated_acc), mean(gated_ll))
    best, best_gate = max(scored, key=lambda c: (round(scored[c][0], 6), scored[c][1]))
    policy = None
    if local:
        keys = [candidate_key(*c) for c in columns] + [NONE]
        policy = fit_policy(keys, acc_t, ll_t, bank.embeddings)
    return KTauChoice(
        k=best.k,
        tau=best.tau,
        by="local" if local else "task",
        grid={candidate_key(*c): round(scored[(c, None)][0], 4) for c in plain},
        gate=best_gate.value if best_gate is not None and best_gate.kind == LEAD else None,
        gate_sim=best_gate.value if best_gate is not None and best_gate.kind == FLOOR else None,
        gate_grid={
            f"{candidate_key(*c)},{g.kind}={g.value}": round(v[0], 4)
            for (c, g), v in scored.items()
            if g is not None
        },
        scores={
            usable[t].name: {
                candidate_key(*c): round(float(acc_t[t, columns.index(c)]), 4) for c in plain
            }
            for t in rows
        },
        policy=policy,
        lam=best.lam if anchors is not None else None,
    )


def candidate_mixture(
    bank: ExpertBank, t: int, cand: Candidate, anchor: Anchor | None = None
) -> Mixture:
    """Candidate ``cand``'s leave-one-out mixture for expert ``t`` (the other experts'
    mixture, mirrored or blended with ``anchor`` as the candidate says)."""
    if (cand.k == 0 or cand.lam < 1.0) and anchor is None:
        raise InvalidInput(f"candidate {candidate_key(*cand)} needs the anchor")
    idx, sims = bank.nearest(bank.embeddings[t], cand.k, exclude=t)
    experts = [bank.experts[i] for i in idx]
    _, mixture = guided_mixture(
        sims,
        [e.mean for e in experts],
        [e.var for e in experts],
        k=cand.k,
        tau=cand.tau,
        lam=cand.lam,
        anchor=anchor,
    )
    return mirror(mixture, bank.centre(exclude=t)) if cand.anti else mixture


def task_checker(
    bank: ExpertBank, tasks: dict[int, Task], evaluator: Evaluator, *, examples: int = 32
) -> TaskCheck:
    """Accuracy of a flattened adapter on expert t's own task (None: t has none)."""

    def check(t: int, rows: dict[str, torch.Tensor]) -> float | None:
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
    adapter: tuple[dict[str, Any], Tensors] | None,  # None: the bare model
) -> tuple[float, float]:
    """Accuracy and mean log-probability (normalised over the labels) of the right label."""
    scores = evaluator.label_scores(task, adapter, examples=examples)  # (N, L)
    gold = torch.tensor([task.labels.index(e.output) for e in examples])
    logp = torch.log_softmax(scores, dim=-1)[torch.arange(len(gold)), gold]  # (N,)
    accuracy = (scores.argmax(-1) == gold).float().mean().item()
    return accuracy, logp.mean().item()
