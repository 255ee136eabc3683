"""Refinement: an adapter trained further on the caller's examples.

The zoo's own trainer, started from the adapter's weights (or, for a LoRA from
scratch, from the layout's shared A and a zero B), with early stopping: a
share of the examples (each label's dealt across the folds, so a label with as
many examples as folds is represented) is held back, its
answer-token loss checked every few steps, and the weights of the best check
returned, the starting weights included, so refinement never returns an
adapter worse than it started on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from generator.adapt.examples import FewShot
from generator.tasks.evaluation import Evaluator
from generator.zoo.trainer import EarlyStop, TrainConfig, train_lora
from registry.errors import InvalidInput
from registry.lora_spec import Adapter

VAL_SHARE = 0.25  # of the examples held back for early stopping


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
    on_step: Callable[[int, float], None] | None = None,
) -> Refined:
    """Train ``start`` (None: a fresh LoRA of ``template``) on ``fewshot``, early-stopped
    on a held-back share of it."""
    if steps < 1:
        raise InvalidInput(f"refine steps must be at least 1, got {steps}")
    if len(fewshot) < 2:
        raise InvalidInput("refinement needs at least 2 examples: one is held back")
    folds = fewshot.folds(max(2, math.ceil(1 / VAL_SHARE)), seed)
    val = folds[0]
    train = [i for fold in folds[1:] for i in fold]
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
