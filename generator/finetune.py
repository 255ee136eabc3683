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

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from generator.checkpoint import SG_LORA, Checkpoint
from generator.evaluation import lora_config_from
from generator.experts import ExpertBank
from generator.hypernet import ICMLoraNet, SGLoraNet, Tokens
from generator.lora_trainer import collate, encode, forward_with_prefix, split_prefix
from generator.prompting import PromptFormat
from generator.tasks import Task
from generator.training import from_tokens, icm_condition, to_tokens, var_tokens
from registry.errors import InvalidInput


def _decoder(ckpt: Checkpoint, bank: ExpertBank, index: int) -> Callable[[], Tokens]:
    """A closure decoding (at the prior mean) the adapter expert ``index``'s task would get."""
    layout, norm = ckpt.layout, ckpt.normaliser
    e = bank.experts[index]
    if ckpt.method == SG_LORA:
        net = ckpt.net
        assert isinstance(net, SGLoraNet)
        idx, sims = bank.nearest(bank.embeddings[index], int(ckpt.hyper["k"]), exclude=index)
        mixture = bank.mixture(idx, sims, float(ckpt.hyper["tau"]))
        mean = to_tokens(layout, norm, [mixture.mean])
        logvar = var_tokens(
            layout,
            norm,
            [mixture.var],
            float(ckpt.hyper["logvar_shift"]),
            float(ckpt.hyper["logvar_scale"]),
        )
        return lambda: net.sample(mean, logvar)
    icm = ckpt.net
    assert isinstance(icm, ICMLoraNet)
    cond = icm_condition(bank.embeddings[index], None, int(ckpt.hyper["hidden_size"]))[None]
    del e
    return lambda: icm.sample(cond)


def finetune(
    ckpt: Checkpoint,
    bank: ExpertBank,
    tasks: dict[int, Task],  # expert index -> its training task
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    steps: int = 60,
    lr: float = 1e-4,
    batch_size: int = 8,
    recon_weight: float = 0.1,
    max_prompt_tokens: int = 256,
    seed: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``ckpt.net`` in place; returns the loss curve and timings."""
    from peft import get_peft_model

    if not tasks:
        raise InvalidInput("end-to-end fine-tuning needs the training experts' tasks")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise InvalidInput("steps and batch size must be at least 1 and lr positive")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    fmt = PromptFormat.for_tokenizer(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    layout, norm = ckpt.layout, ckpt.normaliser
    decoders = {i: _decoder(ckpt, bank, i) for i in tasks}
    encoded = {
        i: split_prefix(encode(fmt, t.description, t.train, max_prompt_tokens))
        for i, t in tasks.items()
    }
    anchors = {i: to_tokens(layout, norm, [bank.experts[i].mean]) for i in tasks}
    peft_model = get_peft_model(model, lora_config_from(ckpt.template))  # type: ignore[arg-type]
    names = dict(peft_model.named_parameters())

    def peft_name(key: str) -> str:
        return key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )

    net = ckpt.net
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    order: list[int] = []
    losses: list[float] = []
    t0 = time.perf_counter()
    try:
        for step in range(1, steps + 1):
            if not order:
                order = list(tasks)
                rng.shuffle(order)
            i = order.pop()
            tokens = decoders[i]()  # {m: (1, L, r, w)}
            weights = layout.unflatten(from_tokens(layout, norm, tokens)[0])
            params = {peft_name(k): v for k, v in weights.items()}
            missing = [k for k in params if k not in names]
            if missing:
                raise InvalidInput(f"generated tensor {missing[0]} has no place in the base model")
            prefix, data = encoded[i]
            batch = rng.sample(data, min(batch_size, len(data)))
            ids, mask, pos, targets, tgt_mask = collate(batch, pad)
            call = _with_weights(peft_model, params)
            logits = forward_with_prefix(call, prefix, ids, mask, pos, targets.shape[1] + 1)[:, :-1]
            task_loss = F.cross_entropy(logits[tgt_mask].float(), targets[tgt_mask])
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
    finally:
        peft_model.unload()
    net.eval()
    return {
        "e2e_steps": steps,
        "e2e_lr": lr,
        "e2e_batch_size": batch_size,
        "e2e_recon_weight": recon_weight,
        "e2e_tasks": len(tasks),
        "e2e_loss_first10": round(sum(losses[:10]) / len(losses[:10]), 4),
        "e2e_loss_last10": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "e2e_seconds": round(time.perf_counter() - t0, 1),
    }


def _with_weights(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> Callable[..., Any]:
    """``model`` called with ``params`` standing in for its own (gradients flow into them)."""

    def call(**kwargs: Any) -> Any:
        return torch.func.functional_call(model, params, args=(), kwargs=kwargs)

    return call


def tasks_for(bank: ExpertBank, suite_tasks: Sequence[Task]) -> dict[int, Task]:
    """Expert index -> task, matched by the task name the zoo stored in the adapter's meta."""
    by_name = {t.name: t for t in suite_tasks if t.is_classification and not t.held_out}
    out = {}
    for i, e in enumerate(bank.experts):
        task = by_name.get(str(e.record.meta.get("task", "")))
        if task is not None and task.train:
            out[i] = task
    return out
