"""LoraHub (Huang et al., 2023) as a few-shot baseline: gradient-free search of the
weights of a linear combination of expert LoRAs on a handful of examples.

As in the paper: the merged adapter is ``A = sum w_i A_i, B = sum w_i B_i``;
the weights start at zero, are bounded to [-1.5, 1.5], and are searched by
nevergrad's NGOpt for a budget of evaluations of the examples' answer-token
loss plus an L1 penalty (0.05 * mean |w|). Here the experts are the ones
nearest the task's description (the paper draws them at random).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from generator.tasks.device import model_device
from generator.tasks.evaluation import Evaluator, FunctionalLora
from generator.tasks.task import Example
from generator.zoo.trainer import collate, encode, forward_with_prefix, split_prefix
from registry.errors import InvalidInput
from registry.lora_spec import Adapter, Tensors

BUDGET = 40  # evaluations of the examples (the paper's default)
BOUND = 1.5
L1 = 0.05


@dataclass(frozen=True)
class Hub:
    adapter: Adapter
    weights: list[float]
    loss: float


def combine(experts: Sequence[Tensors], weights: Sequence[float]) -> Tensors:
    return {
        k: sum((w * e[k] for w, e in zip(weights, experts, strict=True)), torch.zeros(()))
        for k in experts[0]
    }


@torch.no_grad()
def lorahub(
    evaluator: Evaluator,
    description: str,
    examples: Sequence[Example],
    template: dict[str, object],
    experts: Sequence[Tensors],
    *,
    budget: int = BUDGET,
    seed: int = 0,
    max_prompt_tokens: int = 256,
) -> Hub:
    """The LoraHub combination of ``experts`` (registered weights) fitted on ``examples``."""
    try:
        import nevergrad as ng
    except ImportError as exc:  # a dev extra: `make install` installs it
        raise InvalidInput("the LoraHub baseline needs nevergrad: pip install nevergrad") from exc

    if not experts or not examples:
        raise InvalidInput("LoraHub needs experts and examples")
    prefix, data = split_prefix(encode(evaluator.format, description, examples, max_prompt_tokens))
    batches = [data[i : i + 16] for i in range(0, len(data), 16)]
    device = model_device(evaluator.model)  # the search scores where the base model is
    on_device = [{k: v.to(device) for k, v in e.items()} for e in experts]
    with FunctionalLora(evaluator.model, dict(template)) as lora:

        def loss(w: np.ndarray) -> float:
            call = lora.bind(combine(on_device, [float(x) for x in w]))
            total, count = 0.0, 0
            for batch in batches:
                ids, mask, pos, targets, tgt_mask = collate(batch, evaluator.pad_id, device)
                out = forward_with_prefix(call, prefix, ids, mask, pos, targets.shape[1] + 1)
                picked = out[:, :-1][tgt_mask].float()
                total += float(F.cross_entropy(picked, targets[tgt_mask], reduction="sum"))
                count += int(tgt_mask.sum())
            return total / max(1, count) + L1 * float(np.abs(w).mean())

        space = ng.p.Array(init=np.zeros(len(experts))).set_bounds(-BOUND, BOUND)
        space.random_state = np.random.RandomState(seed)
        optimizer = ng.optimizers.NGOpt(parametrization=space, budget=budget)
        with warnings.catch_warnings():
            # NGOpt's COBYLA stage passes scipy a final trust radius scipy finds invalid
            # (not positive, or above the first); scipy uses 1e-6 and warns every search
            warnings.filterwarnings("ignore", "COBYLA: Invalid RHOEND", UserWarning)
            best = optimizer.minimize(loss)
        weights = [float(x) for x in best.value]
        final = loss(best.value)
    merged = {k: v.contiguous() for k, v in combine(experts, weights).items()}
    return Hub((dict(template), merged), weights, round(final, 5))
