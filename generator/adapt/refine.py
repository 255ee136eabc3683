"""Refinement: an adapter trained further on the caller's examples.

The zoo's own trainer, started from the adapter's weights (or, for a LoRA from
scratch, from the layout's shared A and a zero B), with early stopping: a
share of the examples (every label represented) is held back, its
loss checked every few steps, and the weights of the best check returned, the
starting weights included, so refinement never returns an adapter worse than it
started on them.

The loss is either the answer tokens' cross-entropy (``"answer"``, the zoo's) or,
for a classification, rank classification's (``"labels"``): the cross-entropy of
the right label among the labels, each scored by its tokens' total
log-probability, as the harness scores them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from generator.adapt.examples import FewShot
from generator.tasks.device import model_device
from generator.tasks.evaluation import Evaluator
from generator.tasks.prompting import shared_prefix
from generator.tasks.scoring import label_logprobs, label_tensor, score_batch
from generator.zoo.trainer import (
    EarlyStop,
    TrainConfig,
    TrainResult,
    encode,
    run_training,
    train_lora,
)
from registry.errors import InvalidInput
from registry.lora_spec import Adapter

VAL_SHARE = 0.25  # of the examples held back for early stopping
LOSSES = ("answer", "labels")


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
    loss: str = "answer",
    on_step: Callable[[int, float], None] | None = None,
) -> Refined:
    """Train ``start`` (None: a fresh LoRA of ``template``) on ``fewshot``, early-stopped
    on a held-back share of it, with ``loss`` (see the module docstring; free-form
    examples always train on their answer tokens)."""
    if loss not in LOSSES:
        raise InvalidInput(f"refinement loss must be one of {list(LOSSES)}, got {loss!r}")
    if steps < 1:
        raise InvalidInput(f"refine steps must be at least 1, got {steps}")
    if len(fewshot) < 2:
        raise InvalidInput("refinement needs at least 2 examples: one is held back")
    folds = fewshot.folds(max(2, math.ceil(1 / VAL_SHARE)), seed)
    val = folds[0]
    train = [i for fold in folds[1:] for i in fold]
    config = train_config(template, steps, lr, min(16, len(train)), seed)
    initial = None if start is None else start[1]
    early_stop = EarlyStop(fewshot.subset(val).examples, every=every, patience=patience)
    if loss == "labels" and fewshot.is_classification:
        result = train_on_labels(
            evaluator, description, fewshot.subset(train), config, early_stop,
            on_step=on_step, initial=initial,
        )  # fmt: skip
    else:
        result = train_lora(
            evaluator.model,
            evaluator.format,
            description,
            fewshot.subset(train).examples,
            config,
            on_step=on_step,
            initial=initial,
            early_stop=early_stop,
        )
    return Refined(
        adapter=(dict(template), result.weights),
        best_step=int(result.extra["best_step"]),
        steps_run=int(result.extra["steps_run"]),
        val_losses=result.extra["val_losses"],
        seconds=round(result.seconds, 2),
    )


def train_on_labels(
    evaluator: Evaluator,
    description: str,
    train: FewShot,
    config: TrainConfig,
    early_stop: EarlyStop,
    *,
    on_step: Callable[[int, float], None] | None = None,
    initial: Any = None,
) -> TrainResult:
    """The trainer with rank classification's loss: each step, the cross-entropy of the
    right label among ``train.labels`` for a batch of ``train``'s examples (an epoch in
    a seeded order); early-stopped on the same loss over ``early_stop.examples``."""
    if not train.is_classification:
        raise InvalidInput("the labels loss needs a classification (a label set)")
    fmt, pad_id, labels = evaluator.format, evaluator.pad_id, train.labels
    label_ids = [fmt.answer_ids(label) for label in labels]
    prompts = [e.prompt for e in encode(fmt, description, train.examples, config.max_prompt_tokens)]
    n = shared_prefix(prompts)
    prefix, own = prompts[0][:n], [p[n:] for p in prompts]
    gold = torch.tensor([labels.index(e.output) for e in train.examples])
    rng = random.Random(config.seed)
    queue: list[int] = []

    def step_loss(model: Any) -> tuple[torch.Tensor, int]:
        nonlocal queue
        if len(queue) < config.batch_size:  # a new epoch, in a new order
            order = list(range(len(own)))
            rng.shuffle(order)
            queue += order
        idx, queue = queue[: config.batch_size], queue[config.batch_size :]
        device = model_device(model)
        lab, lab_mask = (t.to(device) for t in label_tensor(label_ids, pad_id))
        scores = score_batch(model, prefix, [own[i] for i in idx], lab, lab_mask, pad_id)
        loss = F.cross_entropy(scores.float(), gold[idx].to(device))
        tokens = len(prefix) + sum(len(own[i]) for i in idx) + len(idx) * int(lab_mask.sum())
        return loss, tokens

    held = early_stop.examples
    held_prompts = [e.prompt for e in encode(fmt, description, held, config.max_prompt_tokens)]
    held_gold = torch.tensor([labels.index(e.output) for e in held])

    def validate(model: Any) -> float:
        was_training = model.training
        model.eval()
        scores = label_logprobs(model, held_prompts, label_ids, pad_id=pad_id)
        if was_training:
            model.train()
        return float(F.cross_entropy(scores.float(), held_gold))

    return run_training(
        evaluator.model, config, step_loss, on_step=on_step, initial=initial,
        validate=validate, early_stop=early_stop,
    )  # fmt: skip
