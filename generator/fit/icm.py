"""ICM-LoRA training: a CVAE with prior N(0, I) conditioned on the description
embedding and, when the caller gives examples, the base model's in-context task
vector; the task vector is dropped (zeroed, flag 0) for a share of the samples
so one network serves callers with and without examples."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict

import torch

from generator.experts import ExpertBank
from generator.fit.config import GeneratorConfig
from generator.fit.loop import (
    FitResult,
    StepCallback,
    Trained,
    cvae_loss,
    fit_result,
    split_experts,
    train_loop,
    validation_error,
)
from generator.hypernet.layout import BlockNormaliser
from generator.hypernet.methods import ICM_LORA
from generator.hypernet.networks import ICMLoraNet, NetConfig, icm_condition
from generator.hypernet.tokens import module_shapes, take, to_tokens


def fit_icm(
    bank: ExpertBank,
    config: GeneratorConfig,
    task_vectors: Sequence[torch.Tensor | None] | None,  # per expert (H,), None: no examples
    *,
    hidden_size: int,
    on_step: StepCallback | None = None,
) -> FitResult:
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    layout = bank.layout
    norm = BlockNormaliser.fit(layout, [s for e in bank.experts for s in e.snapshots])
    # one condition per (expert, wording): the network trains on every wording of a
    # task (suite v2's paraphrases), one drawn per sample and step; validation uses the
    # expert's key, as a request's description would be
    counts = torch.tensor([len(w) for w in bank.wordings])
    offsets = torch.cumsum(counts, 0) - counts
    with_tv = torch.stack(
        [
            icm_condition(w, None if task_vectors is None else task_vectors[t], hidden_size)
            for t in range(len(bank))
            for w in bank.wordings[t]
        ]
    )  # (W, C)
    without_tv = torch.stack(
        [icm_condition(w, None, hidden_size) for t in range(len(bank)) for w in bank.wordings[t]]
    )
    keys = torch.stack(
        [icm_condition(bank.embeddings[t], None, hidden_size) for t in range(len(bank))]
    )
    several = bool((counts > 1).any())
    train_idx, val_idx = split_experts(len(bank), config.val_fraction, config.seed)
    samples = [(t, s) for t in train_idx for s in bank.experts[t].snapshots]
    targets = to_tokens(layout, norm, [s for _, s in samples])
    owner = torch.tensor([t for t, _ in samples])
    net = ICMLoraNet(
        module_shapes(layout), with_tv.shape[1], NetConfig(config.hidden, config.latent)
    )
    has_tv = task_vectors is not None and any(v is not None for v in task_vectors)
    drop = config.task_vector_dropout if has_tv else 1.0

    def val_error() -> float:
        return validation_error(net, bank, norm, val_idx, lambda: net.sample(keys[val_idx]))

    def step_loss(batch: torch.Tensor) -> torch.Tensor:
        tasks = owner[batch]
        keep = (torch.rand(len(batch)) >= drop)[:, None]
        rows = offsets[tasks]
        if several:  # one wording each: no draw, so the random stream is as it always was
            rows = rows + (torch.rand(len(batch)) * counts[tasks]).long()
        cond = torch.where(keep, with_tv[rows], without_tv[rows])
        recon, kl = net(take(targets, batch), cond)
        return cvae_loss(recon, take(targets, batch), kl, config.beta)

    best_val, history = train_loop(net, len(samples), step_loss, val_error, config, on_step)
    run = Trained(
        ICM_LORA, bank, net, norm, train_idx, val_idx, len(samples), best_val, history, t0
    )
    hyper = {**asdict(config), "hidden_size": hidden_size}
    return fit_result(run, hyper, {"task_vectors": has_tv})
