"""SG-LoRA's anchor: one multi-task LoRA trained on every training expert's task.

Every prompt carries its task's description, so one adapter trained on many
tasks at once learns what they share: the answer format, and reading the
question before answering it. Neighbours alone cannot give that to a new task
whose nearest experts ask about the other categories of its corpus (their
adapters answer "yes" to the wrong texts). SG-LoRA may serve
``lam mu* + (1 - lam) a``, the mixture pulled towards the anchor a
(``guidance.blend``), where the leave-one-out scores say so.

Those scores must not flatter the anchor: scored on expert t's task, an
anchor that trained on t's examples is no longer a new-task figure. So the
training experts are split into folds and each fold gets an anchor trained on
the other folds' tasks only; selection and the correction's leave-one-out
conditions use the anchor of an expert's fold, and the anchor served (and
stored in the checkpoint) is trained on every task. A fold anchor sees fewer
tasks for fewer steps (the same steps per task), so if anything it
understates the served one. Held-out tasks never reach this code: the caller
passes the training experts' tasks only.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from generator.experts import ExpertBank
from generator.guidance import Anchor
from generator.lora_trainer import TrainConfig, TrainResult, train_multitask
from generator.prompting import PromptFormat
from generator.tasks import Task
from registry.errors import InvalidInput

ANCHOR_FOLDS = 3


@dataclass(frozen=True)
class AnchorSet:
    full: Anchor  # trained on every training expert's task: the one served
    folds: list[Anchor]  # folds[f]: trained on the tasks outside fold f
    fold_of: dict[int, int]  # expert index -> its fold

    def for_expert(self, t: int) -> Anchor:
        """The anchor that never saw expert ``t``'s task (an expert without a task: the
        full one, which never saw it either)."""
        f = self.fold_of.get(t)
        return self.full if f is None else self.folds[f]


def anchor_config(bank: ExpertBank, tasks: dict[int, Task], steps: int, seed: int) -> TrainConfig:
    """The experts' own training recipe (rank, alpha, modules and the shared A init,
    from their registered ``train_config``), for ``steps`` steps."""
    if steps < 1:
        raise InvalidInput(f"anchor steps must be at least 1, got {steps}")
    for t in sorted(tasks):
        recipe = bank.experts[t].record.meta.get("train_config")
        if isinstance(recipe, dict):
            fields = {f.name for f in dataclasses.fields(TrainConfig)}
            known: dict[str, Any] = {k: v for k, v in recipe.items() if k in fields}
            known["target_modules"] = tuple(known.get("target_modules", ("q_proj", "v_proj")))
            return dataclasses.replace(TrainConfig(**known), steps=steps, seed=seed)
    raise InvalidInput(
        "no training expert records its train_config: an anchor needs the experts' recipe "
        "(zoo adapters have it)"
    )


def split_folds(experts: Sequence[int], folds: int, seed: int) -> dict[int, int]:
    """Expert index -> fold, ``folds`` near-equal shuffled folds."""
    if folds < 2:
        raise InvalidInput(f"anchor folds must be at least 2, got {folds}")
    if len(experts) < folds:
        raise InvalidInput(f"{len(experts)} experts' tasks cannot fill {folds} folds")
    order = sorted(experts)
    random.Random(seed).shuffle(order)
    return {t: i % folds for i, t in enumerate(order)}


def train_anchors(
    bank: ExpertBank,
    tasks: dict[int, Task],  # expert index -> its (training) task
    model: Any,
    fmt: PromptFormat,
    *,
    steps: int,
    folds: int = ANCHOR_FOLDS,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
    trainer: Callable[..., TrainResult] = train_multitask,
) -> AnchorSet:
    """The served anchor on every task of ``tasks`` and one anchor per fold
    (``trainer``: ``train_multitask``'s signature)."""
    usable = {t: task for t, task in tasks.items() if task.train}
    config = anchor_config(bank, usable, steps, seed)
    fold_of = split_folds(list(usable), folds, seed)

    def train(members: list[int], n_steps: int, label: str) -> Anchor:
        if on_progress:
            on_progress(f"training the {label} on {len(members)} tasks, {n_steps} steps")
        cfg = dataclasses.replace(config, steps=n_steps)

        def on_step(step: int, loss: float) -> None:
            done = step + 1
            if on_progress and (done % 20 == 0 or done == n_steps):
                on_progress(f"  {label}: step {done}/{n_steps}, loss {loss:.3f}")

        result = trainer(
            model,
            fmt,
            [(usable[t].description, usable[t].train) for t in members],
            cfg,
            on_step=on_step,
        )
        return Anchor(bank.layout.flatten(result.mean), bank.layout.flatten(result.var))

    fold_anchors = []
    for f in range(folds):
        members = sorted(t for t, g in fold_of.items() if g != f)
        n_steps = max(1, round(steps * len(members) / len(usable)))  # the same steps per task
        fold_anchors.append(train(members, n_steps, f"anchor of fold {f + 1}/{folds}"))
    full = train(sorted(usable), steps, "served anchor")
    return AnchorSet(full, fold_anchors, fold_of)
