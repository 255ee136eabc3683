"""Several zoo adapters trained in the same forward passes.

``train_lora`` trains one adapter at a time. On a GPU a 135M model at batch 16 is
bound by kernel launches, not arithmetic: the card waits on Python. Here K tasks
train together. Every row of a batch carries its own task's LoRA (the row-wise
layers of ``generator.tasks.multi_lora``), and each task draws its batches exactly
as ``train_lora`` draws them. The loss is the sum of each task's mean answer-token
loss, so each adapter gets the gradient it would get alone. Gradient clipping,
AdamW, the schedule and the late-trajectory statistics act on each adapter alone.

The prompt prefix a task's examples share is not run once per batch as
``train_lora`` runs it (the K tasks' prefixes differ), so each adapter costs more
arithmetic: a trade for GPUs, not for CPUs. The results are ``train_lora``'s up to
float rounding (``tests/generator/zoo/test_stacked.py``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from generator.tasks.device import model_device
from generator.tasks.multi_lora import Rows, attach_rows, detach_rows
from generator.tasks.prompting import PromptFormat
from generator.tasks.task import Example
from generator.zoo.trainer import (
    Encoded,
    TrainConfig,
    TrainResult,
    attach_lora,
    batches,
    collate,
    encode,
    lora_state,
    lr_schedule,
    pad_id_of,
    peft_config_dict,
)
from generator.zoo.trajectory import Trajectory
from registry.errors import InvalidInput
from registry.lora_spec import Tensors


class _Task:
    """One task's data in ``train_lora``'s order: batches drawn from its own
    ``Random(seed)``. ``train_lora`` draws them with the shared prefix split off; every
    example is then shorter by the same count, so the length order and the batches
    are the same with the prefix kept on, as the stacked passes need it."""

    def __init__(self, data: list[Encoded], config: TrainConfig) -> None:
        self.data, self.config = data, config
        self.rng = random.Random(config.seed)
        self.queue: list[list[Encoded]] = []

    def next_batch(self) -> list[Encoded]:
        if not self.queue:
            c = self.config
            self.queue = batches(self.data, c.batch_size, self.rng, buckets=c.length_buckets)
        return self.queue.pop()


def train_stacked(
    model: torch.nn.Module,
    fmt: PromptFormat,
    tasks: Sequence[tuple[str, Sequence[Example]]],
    config: TrainConfig,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> list[TrainResult]:
    """One LoRA per task, each (description, examples), trained side by side in the same
    passes; a ``TrainResult`` per task, in order, as ``train_lora`` would return it.
    ``on_step`` gets the step and the tasks' mean loss. ``model`` is left as it was."""
    if not tasks:
        raise InvalidInput("no tasks to train")
    empty = [d for d, ex in tasks if not ex]
    if empty:
        raise InvalidInput(f"task {empty[0]!r} has no training examples")
    pad_id = pad_id_of(fmt)
    data = [_Task(encode(fmt, d, ex, config.max_prompt_tokens), config) for d, ex in tasks]
    torch.manual_seed(config.seed)
    peft_model = attach_lora(model, config)  # the layout's shared A, its names and config
    try:
        init = lora_state(peft_model)
        peft_config = peft_config_dict(peft_model)
    finally:
        peft_model.unload()
    frozen = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    layers = _Layers(model, init, len(tasks), float(peft_config["lora_alpha"]) / config.rank)
    try:
        for p in frozen:
            p.requires_grad_(False)
        return _train(model, layers, data, config, pad_id, peft_config, on_step)
    finally:
        layers.remove()
        for p, flag in frozen.items():
            p.requires_grad_(flag)
        model.train(was_training)


class _Layers:
    """The LoRA-targeted linear layers of ``model`` swapped for row-wise ones holding K
    copies of the starting weights (``init``, PEFT names) as trainable parameters."""

    def __init__(self, model: torch.nn.Module, init: Tensors, k: int, scale: float) -> None:
        device = model_device(model)
        self.rows = Rows()
        self.params = {
            n: torch.nn.Parameter(t.to(device).expand(k, -1, -1).clone())
            for n, t in sorted(init.items())
        }
        self.swapped = attach_rows(model, dict(self.params), scale, self.rows)

    def remove(self) -> None:
        detach_rows(self.swapped)

    def stacked(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.params.items()}


def _split(stacked: dict[str, torch.Tensor], k: int) -> Tensors:
    return {n: t[k].float().cpu().clone() for n, t in stacked.items()}


def _train(
    model: torch.nn.Module,
    layers: _Layers,
    data: list[_Task],
    config: TrainConfig,
    pad_id: int,
    peft_config: dict[str, object],
    on_step: Callable[[int, float], None] | None,
) -> list[TrainResult]:
    K = len(data)
    device = model_device(model)
    params = list(layers.params.values())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(config))
    trajectory = Trajectory(config.steps, config.trajectory_start, config.snapshots)
    losses: list[torch.Tensor] = []  # (K,) a step
    tokens = [0] * K
    model.train()
    t0 = time.perf_counter()
    for step in range(config.steps):
        drawn = [task.next_batch() for task in data]
        owner = torch.tensor([k for k, batch in enumerate(drawn) for _ in batch], device=device)
        ids, mask, pos, targets, tgt_mask = collate(
            [e for batch in drawn for e in batch], pad_id, device
        )
        layers.rows.index = owner  # on the model's device: no copy in every layer
        width = targets.shape[1] + 1
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=width)
        logits = out.logits[:, :-1].float()  # (B, K-1, V): each predicts the next column
        per_token = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        ).view(targets.shape)
        sums = torch.zeros(K, device=device).index_add(0, owner, (per_token * tgt_mask).sum(1))
        counts = torch.zeros(K, device=device).index_add(0, owner, tgt_mask.sum(1).float())
        loss = sums / counts  # (K,): each task's mean answer-token loss
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        _clip_each(params, 1.0)
        opt.step()
        sched.step()
        for k, batch in enumerate(drawn):
            tokens[k] += sum(len(e) for e in batch)
        losses.append(loss.detach())
        if step >= trajectory.start:
            trajectory.add(step, layers.stacked())
        if on_step:
            on_step(step, float(loss.detach().mean()))
    seconds = time.perf_counter() - t0
    model.eval()
    final = layers.stacked()
    mean, var = trajectory.mean, trajectory.var()
    curve = torch.stack(losses).cpu() if losses else torch.zeros((0, K))
    return [
        TrainResult(
            peft_config=dict(peft_config),
            weights=_split(final, k),
            mean=_split(mean, k),
            var=_split(var, k),
            snapshots=[_split(s, k) for s in trajectory.snapshots],
            losses=curve[:, k].tolist(),
            seconds=seconds / K,
            tokens=tokens[k],
        )
        for k in range(K)
    ]


def _clip_each(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """``clip_grad_norm_`` for each adapter alone: row k of every stacked parameter."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    squares = sum(g.pow(2).flatten(1).sum(1) for g in grads)
    assert isinstance(squares, torch.Tensor)
    coef = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
