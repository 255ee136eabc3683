"""ICM-LoRA training: a CVAE with prior N(0, I) conditioned on the description
embedding and, when the caller gives examples, the base model's in-context task
vector; the task vector is dropped (zeroed, flag 0) for a share of the samples
so one network serves callers with and without examples.

With ``task_vector_mode`` "standardised", the vectors are put in units of the training
experts' spread (their mean subtracted, each dimension divided by its standard
deviation: raw vectors of different tasks have cosines of 0.95-0.97), each
sample's vector is the mean over a random subset of its expert's seed examples
(so the network sees how a vector varies with the examples a caller brings),
and validation scores the decode with the validation experts' vectors beside
the one without."""

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
    task_vectors: Sequence[torch.Tensor | None] | None,  # per expert: (n, H) states or (H,)
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
    states = [
        None if task_vectors is None or v is None else v.float().reshape(-1, hidden_size)
        for v in (task_vectors or [None] * len(bank))
    ]
    train_idx, val_idx = split_experts(len(bank), config.val_fraction, config.seed)
    has_tv = any(s is not None for s in states)
    standardise = config.task_vector_mode == "standardised" and has_tv
    tv_size = hidden_size if standardise else 0
    net = ICMLoraNet(
        module_shapes(layout), len(icm_condition(bank.embeddings[0], None, hidden_size)),
        NetConfig(config.hidden, config.latent), tv_size=tv_size,
    )  # fmt: skip
    if standardise:
        means = torch.stack([s.mean(0) for t in train_idx if (s := states[t]) is not None])
        assert net.tv_mean is not None and net.tv_scale is not None
        net.tv_mean.copy_(means.mean(0))
        if len(means) > 1:  # one expert has no spread: its units stay the raw ones
            net.tv_scale.copy_(means.std(0).clamp_min(1e-6))
    vectors = [None if s is None else net.standardise(s.mean(0)) for s in states]
    with_tv = torch.stack(
        [
            icm_condition(w, vectors[t], hidden_size)
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
    samples = [(t, s) for t in train_idx for s in bank.experts[t].snapshots]
    targets = to_tokens(layout, norm, [s for _, s in samples])
    owner = torch.tensor([t for t, _ in samples])
    drop = config.task_vector_dropout if has_tv else 1.0
    val_tv = [t for t in val_idx if vectors[t] is not None]
    val_keys = torch.stack(
        [icm_condition(bank.embeddings[t], vectors[t], hidden_size) for t in val_tv]
    ) if standardise and val_tv else None  # fmt: skip

    def val_error() -> float:
        error = validation_error(net, bank, norm, val_idx, lambda: net.sample(keys[val_idx]))
        if val_keys is None:
            return error
        with_examples = validation_error(net, bank, norm, val_tv, lambda: net.sample(val_keys))
        return (error + with_examples) / 2

    def subset_vector(t: int) -> torch.Tensor:
        """The standardised mean state of a random non-empty subset of expert t's seeds."""
        s = states[t]
        assert s is not None
        pick = torch.rand(len(s)) < 0.5
        pick[torch.randint(len(s), (1,))] = True
        return net.standardise(s[pick].mean(0))

    def step_loss(batch: torch.Tensor) -> torch.Tensor:
        tasks = owner[batch]
        keep = (torch.rand(len(batch)) >= drop)[:, None]
        rows = offsets[tasks]
        if several:  # one wording each: no draw, so the random stream is as it always was
            rows = rows + (torch.rand(len(batch)) * counts[tasks]).long()
        cond = torch.where(keep, with_tv[rows], without_tv[rows])
        if standardise:  # each kept vector from its own subset of the expert's seeds
            cond = cond.clone()
            start = cond.shape[1] - hidden_size - 1
            for i, t in enumerate(tasks.tolist()):
                if keep[i] and states[t] is not None:
                    cond[i, start:-1] = torch.nn.functional.normalize(subset_vector(t), dim=-1)
        recon, kl = net(take(targets, batch), cond)
        return cvae_loss(recon, take(targets, batch), kl, config.beta)

    best_val, history = train_loop(net, len(samples), step_loss, val_error, config, on_step)
    run = Trained(
        ICM_LORA, bank, net, norm, train_idx, val_idx, len(samples), best_val, history, t0
    )
    hyper = {**asdict(config), "hidden_size": hidden_size}
    return fit_result(run, hyper, {"task_vectors": has_tv, "standardised": standardise})
