"""Mixture weights of the nearest experts, fitted on the caller's examples.

The experts stay frozen: only their mixing weights are trained, by a few
gradient steps on the examples' answer-token loss through the base model.
Either one weight per expert (``per_block=False``: K numbers) or one per
expert and LoRA block (layer, module), A and B of a block sharing theirs. The
weights are a softmax over learnable logits, started at the description
similarities' softmax, so the fit starts from SG-LoRA's own mixture.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from generator.tasks.device import model_device
from generator.tasks.evaluation import Evaluator, FunctionalLora
from generator.tasks.task import Example
from generator.zoo.trainer import collate, encode, forward_with_prefix, split_prefix
from registry.errors import InvalidInput
from registry.lora_spec import Adapter, Tensors


@dataclass(frozen=True)
class Weighted:
    adapter: Adapter
    weights: torch.Tensor  # (K,) or (blocks, K): each row sums to 1
    losses: list[float]


def block_of(key: str) -> str:
    """The LoRA block a tensor belongs to: its name without ``.lora_A/B.weight``."""
    return key.rsplit(".lora_", 1)[0]


def mix(experts: Sequence[Tensors], weights: torch.Tensor, blocks: list[str]) -> Tensors:
    """sum_k w_k W_k per tensor; ``weights`` (K,) or (blocks, K) rows in ``blocks`` order."""
    index = {b: i for i, b in enumerate(blocks)}
    out = {}
    for key in experts[0]:
        w = weights if weights.ndim == 1 else weights[index[block_of(key)]]  # (K,)
        stacked = torch.stack([e[key] for e in experts])  # (K, *shape)
        out[key] = torch.tensordot(w, stacked, dims=1)
    return out


def fit_weights(
    evaluator: Evaluator,
    description: str,
    examples: Sequence[Example],
    template: dict[str, object],
    experts: Sequence[Tensors],
    similarities: torch.Tensor,  # (K,) description cosines of the experts
    *,
    tau: float = 0.1,
    steps: int = 20,
    lr: float = 0.1,
    per_block: bool = False,
    batch_size: int = 16,
    max_prompt_tokens: int = 256,
    seed: int = 0,
) -> Weighted:
    """Fit the mixing weights of ``experts`` (their registered weights) on ``examples``,
    on the base model's device; the mixed adapter and its weights come back on the CPU."""
    if not experts or len(experts) != len(similarities):
        raise InvalidInput("weighting needs the experts and their similarities")
    if steps < 1 or not lr > 0 or not examples:
        raise InvalidInput("weighting needs examples, steps >= 1 and a positive lr")
    blocks = sorted({block_of(k) for k in experts[0]})
    device = model_device(evaluator.model)  # the fit runs where the base model is
    experts = [{k: v.to(device) for k, v in e.items()} for e in experts]
    start = torch.log_softmax(similarities.float().to(device) / tau, dim=0)  # (K,)
    logits = (start if not per_block else start.repeat(len(blocks), 1)).clone()
    logits.requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    fmt = evaluator.format
    prefix, data = split_prefix(encode(fmt, description, examples, max_prompt_tokens))
    rng = random.Random(seed)
    losses: list[float] = []
    with FunctionalLora(evaluator.model, dict(template)) as lora:
        for _ in range(steps):
            batch = rng.sample(data, min(batch_size, len(data)))
            ids, mask, pos, targets, tgt_mask = collate(batch, evaluator.pad_id, device)
            call = lora.bind(mix(experts, torch.softmax(logits, dim=-1), blocks))
            out = forward_with_prefix(call, prefix, ids, mask, pos, targets.shape[1] + 1)
            loss = F.cross_entropy(out[:, :-1][tgt_mask].float(), targets[tgt_mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(round(loss.item(), 5))
    weights = torch.softmax(logits.detach(), dim=-1)
    mixed = {k: v.detach().cpu().contiguous() for k, v in mix(experts, weights, blocks).items()}
    return Weighted((dict(template), mixed), weights.cpu(), losses)
