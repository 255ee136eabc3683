"""What SG-LoRA and ICM-LoRA training share: the validation split of the experts,
the CVAE loss, and the optimisation loop that keeps the best validation state."""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from generator.experts import ExpertBank
from generator.fit.config import GeneratorConfig
from generator.hypernet.checkpoint import Checkpoint
from generator.hypernet.geometry import delta_relative_error
from generator.hypernet.layout import BlockNormaliser
from generator.hypernet.tokens import Tokens, from_tokens

StepCallback = Callable[[int, int, float], None]  # (step, steps, running loss)


@dataclass
class FitResult:
    checkpoint: Checkpoint
    metrics: dict[str, Any]


def split_experts(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = int(round(n * fraction)) if n >= 5 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def cvae_loss(recon: Tokens, target: Tokens, kl: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean squared error per module (normalised units) + beta * mean KL."""
    mse = sum(((recon[m] - target[m]) ** 2).mean() for m in target)
    assert isinstance(mse, torch.Tensor)
    return mse / len(target) + beta * kl.mean()


def validation_error(
    net: torch.nn.Module,
    bank: ExpertBank,
    norm: BlockNormaliser,
    val_idx: list[int],
    decode: Callable[[], Tokens],
) -> float:
    """Mean update-space error of the decoded (prior-mean) adapters of the validation experts."""
    if not val_idx:
        return float("nan")
    net.eval()
    with torch.no_grad():
        rows = from_tokens(bank.layout, norm, decode())
    net.train()
    return sum(
        delta_relative_error(bank.layout, r, bank.experts[t].mean)
        for r, t in zip(rows, val_idx, strict=True)
    ) / len(val_idx)


def train_loop(
    net: torch.nn.Module,
    n_samples: int,
    step_loss: Callable[[torch.Tensor], torch.Tensor],
    val_error: Callable[[], float],
    config: GeneratorConfig,
    on_step: StepCallback | None,
) -> tuple[float, list[dict[str, float | None]]]:
    """AdamW with cosine decay; keeps the state with the lowest validation error."""
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    net.train()
    best_val = val_error()
    best_state = copy.deepcopy(net.state_dict())
    history: list[dict[str, float | None]] = [{"step": 0, "val": finite(best_val)}]
    running = 0.0
    for step in range(1, config.steps + 1):
        lr = config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / config.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = torch.randint(n_samples, (min(config.batch_size, n_samples),), generator=gen)
        loss = step_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
        if on_step:
            on_step(step, config.steps, running)
        if step % config.eval_every == 0 or step == config.steps:
            val = val_error()
            history.append({"step": step, "loss": round(running, 5), "val": finite(val)})
            if math.isnan(best_val) or val < best_val:
                best_val = val
                best_state = copy.deepcopy(net.state_dict())
    if not math.isnan(best_val):
        net.load_state_dict(best_state)
    net.eval()
    return best_val, history


def finite(x: float) -> float | None:
    """JSON (and every database) has no NaN: an absent validation score is None."""
    return None if math.isnan(x) else round(x, 6)


@dataclass(frozen=True)
class Trained:
    """What a training run ends with, for ``fit_result``."""

    method: str
    bank: ExpertBank
    net: torch.nn.Module
    normaliser: BlockNormaliser
    train_idx: list[int]
    val_idx: list[int]
    samples: int
    best_val: float
    history: list[dict[str, float | None]]
    started: float  # time.perf_counter() at the start


def fit_result(
    run: Trained,
    hyper: dict[str, Any],
    metrics: dict[str, Any],
    *,
    embeddings: torch.Tensor | None = None,
) -> FitResult:
    """The checkpoint (``hyper``, and the experts' ``embeddings`` for SG-LoRA) and the
    metrics every method reports, around its own ``metrics``."""
    from generator.hypernet.networks import ICMLoraNet, SGLoraNet, parameter_count

    assert isinstance(run.net, SGLoraNet | ICMLoraNet)
    everything = {
        "method": run.method,
        "experts": len(run.bank),
        "train_experts": len(run.train_idx),
        "val_experts": len(run.val_idx),
        "samples": run.samples,
        **metrics,
        "val_rel_error": finite(run.best_val),
        "history": run.history,
        "parameters": parameter_count(run.net),
        "train_seconds": round(time.perf_counter() - run.started, 1),
    }
    checkpoint = Checkpoint(
        method=run.method,
        layout=run.bank.layout,
        template=run.bank.template,
        normaliser=run.normaliser,
        net=run.net,
        hyper=hyper,
        expert_ids=run.bank.ids,
        expert_embeddings=embeddings,
    )
    return FitResult(checkpoint, everything)
