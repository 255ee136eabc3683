"""The multi-task LoRA baseline: one adapter trained on every training task at once.

Every prompt carries its task's description, so one LoRA can learn what the
tasks share (the answer format, reading the question) and, from the
description, some of what sets them apart. It is the baseline a generator must
beat to show that it does more than one well-trained adapter does (Text-to-LoRA
compares against the same).

Same compute as the generator: a generator is built from a zoo of one
adapter per training task, ``steps`` optimiser steps of ``batch_size``
examples each; the multi-task LoRA gets the zoo's recipe (rank, alpha,
learning rate, batch, the layout's shared A) and that many steps per task in
total, the tasks taking turns (``train_multitask``). The generator's own fit
is small beside its zoo and is not added.

It is registered as a trained adapter named ``baseline-multitask`` (or with a
caller's suffix, e.g. for the scaling study's task subsets), marked
``meta["baseline"]`` so that no generator takes it for an expert; ``loramint
eval generators`` scores it as the ``multi-task`` column when it exists.
Training is one run: a killed run starts again from the beginning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from generator.tasks.evaluation import Evaluator, load_base
from generator.tasks.task import Task
from generator.zoo.build import zoo_records
from generator.zoo.trainer import TrainConfig, train_multitask
from registry.errors import InvalidInput
from registry.lora_spec import Adapter, weights_bytes
from registry.models import Provenance
from registry.peft_format import PeftFiles
from registry.records import AdapterRecord
from registry.service import Registry
from registry.validation import check_name

NAME = "baseline-multitask"
BASELINE = "multi-task"  # meta["baseline"] of its record


def zoo_config(registry: Registry, base_model: str) -> TrainConfig:
    """The recipe the registered zoo was trained with (its first adapter's), else the
    zoo's defaults."""
    for rec in zoo_records(registry, base_model):
        recorded = rec.meta.get("train_config")
        if isinstance(recorded, dict):
            known = {f.name for f in dataclasses.fields(TrainConfig)}
            kwargs = {k: v for k, v in recorded.items() if k in known}
            if "target_modules" in kwargs:
                kwargs["target_modules"] = tuple(kwargs["target_modules"])
            return TrainConfig(**kwargs)
    return TrainConfig()


def find(registry: Registry, base_model: str, name: str = NAME) -> AdapterRecord | None:
    rec = registry.find_adapter(base_model, name)
    return rec if rec is not None and rec.meta.get("baseline") == BASELINE else None


def load(registry: Registry, base_model: str, name: str = NAME) -> Adapter | None:
    """The registered multi-task LoRA's (config, weights), or None when there is none."""
    rec = find(registry, base_model, name)
    if rec is None:
        return None
    return registry.adapter_files(rec.id).parsed()


def train(
    registry: Registry,
    base_model: str,
    tasks: Sequence[Task],
    *,
    steps_per_task: int | None = None,
    name: str = NAME,
    device: str = "auto",
    on_step: Callable[[int, float], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[AdapterRecord, bool]:
    """Train and register the multi-task LoRA on ``tasks`` (held-out ones are refused);
    returns (record, trained now). An existing one of that name is returned as it is."""
    held = [t.name for t in tasks if t.held_out]
    if held:
        raise InvalidInput(f"the multi-task LoRA trains on training tasks only: {held} held out")
    if not tasks:
        raise InvalidInput("no training tasks for the multi-task LoRA")
    check_name("adapter", name)  # refused before the training, not after it
    found = find(registry, base_model, name)
    if found is not None:
        return found, False
    if registry.find_adapter(base_model, name) is not None:
        raise InvalidInput(f"adapter {name!r} of {base_model} exists and is not a baseline")
    bm = registry.prepare_base_model(base_model, on_progress=on_progress)
    recipe = zoo_config(registry, bm.name)
    per_task = recipe.steps if steps_per_task is None else steps_per_task
    if per_task < 1:
        raise InvalidInput(f"steps per task must be at least 1, got {per_task}")
    config = dataclasses.replace(recipe, steps=per_task * len(tasks))
    if on_progress:
        on_progress(
            f"training the multi-task LoRA on {len(tasks)} tasks: {config.steps} steps of "
            f"{config.batch_size} examples"
        )
    model, tokenizer = load_base(registry.base_model_path(bm.name), device)
    evaluator = Evaluator(model, tokenizer)
    result = train_multitask(
        model,
        evaluator.format,
        [(t.description, t.train) for t in tasks],
        config,
        on_step=on_step,
    )
    meta: dict[str, Any] = {
        "baseline": BASELINE,
        "tasks": [t.name for t in tasks],
        "train_config": dataclasses.asdict(config),
        "steps_per_task": per_task,
    }
    rec = registry.add_adapter(
        PeftFiles(
            config={**result.peft_config, "base_model_name_or_path": bm.name,
                    "inference_mode": True},
            weights=weights_bytes(result.weights),
        ),  # fmt: skip
        base_model=bm.name,
        description=f"Multi-task LoRA baseline trained on {len(tasks)} tasks",
        name=name,
        provenance=Provenance.TRAINED,
        metrics={"train_seconds": round(result.seconds, 2),
                 "tokens_per_second": round(result.tokens_per_second, 1)},
        meta=meta,
    )  # fmt: skip
    return rec, True
