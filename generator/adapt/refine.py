"""Refinement: an adapter trained further on the caller's examples.

The zoo's own trainer, started from the adapter's weights (or, for a LoRA from
scratch, from the layout's shared A and a zero B), with early stopping: a
share of the examples (every label represented) is held back, its
answer-token loss checked every few steps, and the weights of the best check
returned, the starting weights included, so refinement never returns an
adapter worse than it started on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from generator.adapt.examples import FewShot
from generator.tasks.evaluation import Evaluator
from generator.zoo.trainer import EarlyStop, TrainConfig, train_lora
from registry.errors import InvalidInput
from registry.lora_spec import Adapter, Tensors

VAL_SHARE = 0.25  # of the examples held back for early stopping
BAGS = max(2, math.ceil(1 / VAL_SHARE))  # folds of the split: the most runs bagging averages


@dataclass(frozen=True)
class Refined:
    adapter: Adapter
    best_step: int
    steps_run: int
    val_losses: list[list[float]]
    seconds: float


def train_config(
    template: dict[str, Any], steps: int, lr: float, batch: int, seed: int
) -> TrainConfig:
    """The trainer's settings for an adapter of ``template`` (its rank, alpha, modules)."""
    modules = template.get("target_modules")
    if isinstance(modules, str) or not modules:
        raise InvalidInput("refinement needs the adapter's target modules as a list")
    return TrainConfig(
        rank=int(template["r"]),
        alpha=float(template.get("lora_alpha", 2 * int(template["r"]))),
        target_modules=tuple(sorted(str(m) for m in modules)),
        steps=steps,
        batch_size=batch,
        lr=lr,
        warmup_steps=0,
        seed=seed,
        snapshots=1,
    )


def refine(
    evaluator: Evaluator,
    description: str,
    fewshot: FewShot,
    start: Adapter | None,
    template: dict[str, Any],
    *,
    steps: int,
    lr: float = 3e-3,
    every: int = 2,
    patience: int = 3,
    seed: int = 0,
    held: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> Refined:
    """Train ``start`` (None: a fresh LoRA of ``template``) on ``fewshot``, early-stopped
    on a held-back share of it (fold ``held`` of the split)."""
    if steps < 1:
        raise InvalidInput(f"refine steps must be at least 1, got {steps}")
    if len(fewshot) < 2:
        raise InvalidInput("refinement needs at least 2 examples: one is held back")
    folds = fewshot.folds(BAGS, seed)
    if not 0 <= held < len(folds):
        raise InvalidInput(f"held-back fold {held} is not one of the {len(folds)} folds")
    val = folds[held]
    train = [i for f, fold in enumerate(folds) if f != held for i in fold]
    config = train_config(template, steps, lr, min(16, len(train)), seed)
    initial = None if start is None else start[1]
    result = train_lora(
        evaluator.model,
        evaluator.format,
        description,
        fewshot.subset(train).examples,
        config,
        on_step=on_step,
        initial=initial,
        early_stop=EarlyStop(fewshot.subset(val).examples, every=every, patience=patience),
    )
    return Refined(
        adapter=(dict(template), result.weights),
        best_step=int(result.extra["best_step"]),
        steps_run=int(result.extra["steps_run"]),
        val_losses=result.extra["val_losses"],
        seconds=round(result.seconds, 2),
    )


def bagged(
    evaluator: Evaluator,
    description: str,
    fewshot: FewShot,
    start: Adapter | None,
    template: dict[str, Any],
    *,
    bags: int,
    steps: int,
    lr: float = 3e-3,
    seed: int = 0,
) -> Refined:
    """Refinement run ``bags`` times, each holding back another fold of the split, and the
    runs' adapters averaged (``average``): each run fits its own draw of the examples, and
    their mean keeps what they agree on."""
    if not 1 <= bags <= BAGS:
        raise InvalidInput(f"refinement bags must be in [1, {BAGS}], got {bags}")
    runs = [
        refine(evaluator, description, fewshot, start, template, steps=steps, lr=lr,
               seed=seed, held=h)
        for h in range(min(bags, len(fewshot.folds(BAGS, seed))))
    ]  # fmt: skip
    if len(runs) == 1:
        return runs[0]
    weights = average([r.adapter[1] for r in runs], int(template["r"]))
    return Refined(
        adapter=(dict(template), weights),
        best_step=round(sum(r.best_step for r in runs) / len(runs)),
        steps_run=sum(r.steps_run for r in runs),
        val_losses=[c for r in runs for c in r.val_losses],
        seconds=round(sum(r.seconds for r in runs), 2),
    )


def average(adapters: list[Tensors], rank: int) -> Tensors:
    """The LoRA of rank ``rank`` nearest (least squares, per block) to the mean of the
    adapters' updates B @ A: the mean's leading singular directions, the singular values
    split evenly between B and A."""
    out: Tensors = {}
    for key in adapters[0]:
        if ".lora_A." not in key:
            continue
        b_key = key.replace(".lora_A.", ".lora_B.")
        mean = torch.stack([a[b_key].double() @ a[key].double() for a in adapters]).mean(0)
        u, s, vh = torch.linalg.svd(mean, full_matrices=False)
        root = s[:rank].sqrt()
        dtype = adapters[0][key].dtype
        out[key] = (root[:, None] * vh[:rank]).to(dtype).contiguous()
        out[b_key] = (u[:, :rank] * root).to(dtype).contiguous()
    return out
