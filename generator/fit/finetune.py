"""End-to-end fine-tuning of a trained generator through the base model's loss.

Reconstruction training makes a generator predict weights close to the
experts'; what a user wants is an adapter that *works*. As Text-to-LoRA does
in its stronger mode, this stage decodes an adapter for a training task (from
the condition that task would get at inference: for SG-LoRA its leave-one-out
mixture of other experts), attaches it to the frozen base model, and
back-propagates the task's answer-token cross-entropy into the generator. A
small reconstruction term keeps the decoder near the experts' weights.

Only training experts' tasks are used; held-out tasks never reach this code.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from generator.experts import ExpertBank
from generator.fit.config import FinetuneConfig
from generator.fit.sg import loo_mixture
from generator.hypernet.checkpoint import Checkpoint
from generator.hypernet.methods import SG_LORA
from generator.hypernet.networks import ICMLoraNet, SGLoraNet, icm_condition
from generator.hypernet.tokens import Tokens, from_tokens, to_tokens, var_tokens
from generator.tasks.device import model_device
from generator.tasks.evaluation import FunctionalLora
from generator.tasks.prompting import PromptFormat
from generator.tasks.task import Task
from generator.zoo.trainer import collate, encode, forward_with_prefix, split_prefix
from registry.errors import InvalidInput


def _decoder(
    ckpt: Checkpoint, bank: ExpertBank, index: int, device: torch.device
) -> Callable[[], Tokens]:
    """A closure decoding (at the prior mean, on ``device``) the adapter expert ``index``'s
    task would get."""
    layout, norm = ckpt.layout, ckpt.normaliser
    e = bank.experts[index]
    if ckpt.method == SG_LORA:
        net = ckpt.net
        assert isinstance(net, SGLoraNet)
        k, tau, gate = int(ckpt.hyper["k"]), float(ckpt.hyper["tau"]), ckpt.hyper.get("gate")
        mixture = loo_mixture(bank, index, k, tau, gate)
        mean = _to(to_tokens(layout, norm, [mixture.mean]), device)
        logvar = var_tokens(
            layout,
            norm,
            [mixture.var],
            float(ckpt.hyper["logvar_shift"]),
            float(ckpt.hyper["logvar_scale"]),
        )
        logvar = _to(logvar, device)
        return lambda: net.sample(mean, logvar)
    icm = ckpt.net
    assert isinstance(icm, ICMLoraNet)
    cond = icm_condition(bank.embeddings[index], None, int(ckpt.hyper["hidden_size"]))[None]
    cond = cond.to(device)
    del e
    return lambda: icm.sample(cond)


def _to(tokens: Tokens, device: torch.device) -> Tokens:
    return {m: t.to(device) for m, t in tokens.items()}


def finetune(
    ckpt: Checkpoint,
    bank: ExpertBank,
    tasks: dict[int, Task],  # expert index -> its training task
    model: torch.nn.Module,
    tokenizer: Any,
    config: FinetuneConfig,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``ckpt.net`` in place; returns the loss curve and timings.

    ``config.val_fraction`` of the tasks (at least one when there are four or more)
    are never trained on: every ``eval_every`` steps (default: a tenth of the run)
    the generator decodes their adapters and their task loss is measured; the
    state with the lowest validation loss is kept, the untuned one included,
    so the stage cannot make unseen tasks worse than it found them.

    The generator runs where ``model`` is (a GPU, say); the experts and the returned
    network stay on the CPU.
    """
    if not tasks:
        raise InvalidInput("end-to-end fine-tuning needs the training experts' tasks")
    steps, lr, batch_size = config.steps, config.lr, config.batch_size
    recon_weight, val_fraction, seed = config.recon_weight, config.val_fraction, config.seed
    rng = random.Random(seed)
    val_ids: list[int] = []
    if len(tasks) >= 4 and val_fraction > 0:
        val_ids = sorted(rng.sample(sorted(tasks), max(1, round(val_fraction * len(tasks)))))
    train_ids = [i for i in tasks if i not in val_ids]
    eval_every = config.eval_every or max(1, steps // 10)
    torch.manual_seed(seed)
    fmt = PromptFormat.for_tokenizer(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    layout, norm = ckpt.layout, ckpt.normaliser
    device = model_device(model)
    net = ckpt.net.to(device)
    on_device = norm.to(device)  # the decoded adapters are de-normalised where they are
    decoders = {i: _decoder(ckpt, bank, i, device) for i in tasks}
    encoded = {
        i: split_prefix(encode(fmt, t.description, t.train, config.max_prompt_tokens))
        for i, t in tasks.items()
    }
    anchors = {i: _to(to_tokens(layout, norm, [bank.experts[i].mean]), device) for i in tasks}
    stack = contextlib.ExitStack()  # the LoRA stays attached until the loop ends
    lora = stack.enter_context(FunctionalLora(model, ckpt.template))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    order: list[int] = []
    losses: list[float] = []
    val_batches = {i: encoded[i][1][: 2 * batch_size] for i in val_ids}

    def task_loss_of(i: int, batch: list[Any]) -> tuple[torch.Tensor, Tokens]:
        tokens = decoders[i]()  # {m: (1, L, r, w)}
        weights = layout.unflatten(from_tokens(layout, on_device, tokens)[0])
        ids, mask, pos, targets, tgt_mask = collate(batch, pad, device)
        call = lora.bind(weights)
        prefix = encoded[i][0]
        logits = forward_with_prefix(call, prefix, ids, mask, pos, targets.shape[1] + 1)[:, :-1]
        return F.cross_entropy(logits[tgt_mask].float(), targets[tgt_mask]), tokens

    @torch.no_grad()
    def val_loss() -> float | None:
        if not val_ids:
            return None
        net.eval()
        loss = sum(task_loss_of(i, val_batches[i])[0].item() for i in val_ids) / len(val_ids)
        net.train()
        return loss

    t0 = time.perf_counter()
    curve: list[list[float]] = []  # [step, validation loss]
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None

    def checkpoint_val(step: int) -> None:
        nonlocal best
        v = val_loss()
        if v is None:
            return
        curve.append([step, round(v, 4)])
        if best is None or v < best[0]:
            best = (v, step, {k: t.detach().clone() for k, t in net.state_dict().items()})

    try:
        checkpoint_val(0)
        net.train()
        for step in range(1, steps + 1):
            if not order:
                order = list(train_ids)
                rng.shuffle(order)
            i = order.pop()
            data = encoded[i][1]
            task_loss, tokens = task_loss_of(i, rng.sample(data, min(batch_size, len(data))))
            recon = sum(((tokens[m] - anchors[i][m]) ** 2).mean() for m in tokens)
            assert isinstance(recon, torch.Tensor)
            loss = task_loss + recon_weight * recon / len(tokens)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            opt.step()
            losses.append(task_loss.item())
            if on_step:
                on_step(step, steps, sum(losses[-10:]) / len(losses[-10:]))
            if step % eval_every == 0 or step == steps:
                checkpoint_val(step)
    finally:
        stack.close()
        net.to("cpu")
    net.eval()
    stats: dict[str, Any] = {}
    if best is not None:
        net.load_state_dict(best[2])
        stats = {
            "e2e_val_tasks": len(val_ids),
            "e2e_val_loss_initial": curve[0][1],
            "e2e_val_loss_best": round(best[0], 4),
            "e2e_best_step": best[1],
            "e2e_val_curve": curve,
        }
    return {
        **stats,
        "e2e_steps": steps,
        "e2e_lr": lr,
        "e2e_batch_size": batch_size,
        "e2e_recon_weight": recon_weight,
        "e2e_tasks": len(train_ids),
        "e2e_loss_first10": round(sum(losses[:10]) / len(losses[:10]), 4),
        "e2e_loss_last10": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "e2e_seconds": round(time.perf_counter() - t0, 1),
    }
