"""The four computing stages of a transfer, each a function of the running job
(``generator.transfer.run.Run``) that returns the stage's output: synthetic
inputs, the discriminator, the filtered inputs and the distilled adapter.
The first three save a key of everything their output depends on, so another
job of the same adapter reuses them (``Run.reused``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from generator.tasks.evaluation import Evaluator
from generator.transfer.config import TransferConfig
from generator.transfer.discriminator import (
    Discriminator,
    margins,
    realness,
    rejection_sample,
    train_discriminator,
)
from generator.transfer.run import Run, StageOutput, reused, stage_key
from generator.transfer.source import SourceTask, distill_target
from generator.transfer.synthesis import Synthesis, Synthesizer, model_sampler, synthesize
from registry.errors import InvalidInput

DISC_SETTINGS = (
    "few_shot", "gen_batch", "max_new_tokens", "temperature", "top_p", "max_input_chars",
    "max_rounds", "disc_negatives", "disc_rank", "disc_steps", "disc_lr", "seed",
)  # fmt: skip


# what the synthetic inputs depend on besides the target model and the seeds (the
# filter's further batches come from the same sampler, so it shares them)
SYNTH_SETTINGS = (
    "samples", "few_shot", "gen_batch", "max_new_tokens", "temperature", "top_p",
    "max_input_chars", "max_rounds", "seed",
)  # fmt: skip


def synthesizer(run: Run, model: Evaluator, *, seed: int) -> Synthesizer:
    """A sampler of new inputs for the source task from ``model``, seeded."""
    cfg = run.config
    sample = model_sampler(model.model, model.tokenizer, cfg)
    return Synthesizer(sample, run.source.description, run.source.seed_inputs(cfg), cfg, seed=seed)


def synthesize_key(source: SourceTask, target: str, config: TransferConfig) -> str:
    return stage_key(
        {
            "target_base_model": target,
            "description": source.description,
            "seeds": source.seed_inputs(config),
            "settings": {k: getattr(config, k) for k in SYNTH_SETTINGS},
        }
    )


def synthesize_stage(run: Run) -> StageOutput:
    cfg = run.config
    key = synthesize_key(run.source, run.target, cfg)
    earlier = reused(run, "synthesize", key)
    if earlier is not None:
        return earlier
    target = run.models.target
    synth = synthesizer(run, target, seed=cfg.seed)
    budget = math.ceil(cfg.samples / cfg.gen_batch) + cfg.max_rounds
    stats = synthesize(
        synth,
        cfg.samples,
        max_batches=budget,
        on_batch=lambda s: run.fraction("synthesize", len(s.inputs) / cfg.samples),
    )
    if not stats.inputs:
        raise InvalidInput(
            f"the target model gave no usable synthetic input in {stats.batches} batches "
            f"({stats.empty} empty, {stats.seed_copies} copies of seeds); try another temperature"
        )
    return StageOutput(stats.figures(), {"inputs": stats.inputs, "key": key})


def discriminator_key(source: SourceTask, config: TransferConfig) -> str:
    return stage_key(
        {
            "source_base_model": source.record.base_model,
            "seeds": source.seed_inputs(config),
            "settings": {k: getattr(config, k) for k in DISC_SETTINGS},
            "target_modules": sorted(str(m) for m in source.record.target_modules),
        }
    )


def discriminator_stage(run: Run, modules: tuple[str, ...]) -> StageOutput:
    cfg, source = run.config, run.source
    key = discriminator_key(source, cfg)
    earlier = reused(run, "discriminator", key)
    if earlier is not None:
        return earlier
    src = run.models.source
    synth = synthesizer(run, src, seed=cfg.seed + 1)
    budget = math.ceil(cfg.disc_negatives / cfg.gen_batch) + cfg.max_rounds
    negatives = synthesize(
        synth,
        cfg.disc_negatives,
        max_batches=budget,
        # the first third of the stage's bar; training is the rest
        on_batch=lambda s: run.fraction("discriminator", len(s.inputs) / cfg.disc_negatives / 3),
    )
    if not negatives.inputs:
        raise InvalidInput("the source model gave no usable synthetic input for the discriminator")
    disc = train_discriminator(
        src.model,
        src.format,
        source.description,
        source.seed_inputs(cfg),
        negatives.inputs,
        cfg,
        modules,
        on_step=lambda step, loss: run.fraction(
            "discriminator", (1 + 2 * (step + 1) / cfg.disc_steps) / 3
        ),
    )
    figures = {**disc.figures(), "negatives": negatives.figures()}
    data = {"key": key, "peft_config": disc.peft_config, "losses": disc.losses}
    return StageOutput(figures, data, disc.weights)


def stage_discriminator(disc_out: StageOutput) -> Discriminator:
    """The discriminator a finished ``discriminator`` stage saved."""
    return Discriminator(
        peft_config=disc_out.data["peft_config"],
        weights=disc_out.tensors,
        losses=disc_out.data["losses"],
        real=int(disc_out.figures["real"]),
        synthetic=int(disc_out.figures["synthetic"]),
        seconds=float(disc_out.figures["seconds"]),
    )


def filter_trust(
    source: SourceTask, judge_model: Evaluator, filtered: dict[str, Any], disc_out: StageOutput
) -> dict[str, float]:
    """Every input the filter scored (kept, then rejected) -> the discriminator's p(real):
    what the filter stage saved, or (a stage saved before it kept them) computed anew."""
    texts = [*filtered["kept"], *filtered["rejected"]]
    saved = filtered.get("realness")
    if isinstance(saved, dict) and all(t in saved for t in texts):
        return {t: float(saved[t]) for t in texts}
    scores = realness(judge_model, stage_discriminator(disc_out), source.description, texts)
    return dict(zip(texts, scores, strict=True))


def filter_stage(run: Run, synth_out: StageOutput, disc_out: StageOutput) -> StageOutput:
    """The filter's output: an earlier job's, when it filtered the same synthetic inputs
    with the same discriminator (both stages' keys), or computed here."""
    keys = (synth_out.data.get("key"), disc_out.data.get("key"))
    key = stage_key({"synthesize": keys[0], "discriminator": keys[1]}) if all(keys) else None
    out = reused(run, "filter", key) if key else None
    if out is None:
        out = _filter_anew(run, synth_out.data["inputs"], disc_out)
        out.data["key"] = key
    figures, cfg = out.figures, run.config
    if figures["kept"] < cfg.min_kept:
        raise InvalidInput(
            f"the discriminator kept {figures['kept']} of {figures['scored']} synthetic "
            f"inputs after {figures['rounds']} extra rounds, fewer than min_kept={cfg.min_kept}; "
            "raise max_rounds, or lower min_kept"
        )
    return out


def _filter_anew(run: Run, pool: list[str], disc_out: StageOutput) -> StageOutput:
    cfg, source = run.config, run.source
    disc = stage_discriminator(disc_out)
    target = run.models.target
    more = synthesizer(run, target, seed=cfg.seed + 2)
    more.exclude(pool)

    trust: dict[str, float] = {}  # every scored input's p(real)
    accepted = [0]

    def accept(texts: list[str]) -> list[bool]:
        m = margins(run.models.source, disc, source.description, texts)  # (N,)
        trust.update(zip(texts, torch.sigmoid(m).tolist(), strict=True))
        verdicts = [bool(x > 0) for x in m.tolist()]
        accepted[0] += sum(verdicts)
        run.fraction("filter", accepted[0] / cfg.samples)
        return verdicts

    def next_batch(stats: Synthesis) -> list[str]:
        return more.batch(stats)

    filtered = rejection_sample(
        pool, accept, next_batch, wanted=cfg.samples, max_rounds=cfg.max_rounds
    )
    scored = [*filtered.kept, *filtered.rejected]
    data = {
        "kept": filtered.kept,
        "rejected": filtered.rejected,
        "realness": {t: round(trust[t], 6) for t in scored},
    }
    return StageOutput(filtered.figures(cfg.samples), data)


def distill_stage(
    run: Run, filtered: dict[str, Any], disc_out: StageOutput, modules: tuple[str, ...]
) -> StageOutput:
    trust = None
    if run.config.soft_filter:  # every scored input, drawn by its p(real)
        trust = filter_trust(run.source, run.models.source, filtered, disc_out)
    distilled, teacher = distill_target(
        run.source,
        run.models.source,
        run.models.target,
        list(trust) if trust is not None else filtered["kept"],
        run.config,
        modules,
        trust=trust,
        on_step=run.on_step("distill", run.config.distill_steps),
    )
    figures = {**distilled.figures(), **teacher}
    data = {"peft_config": distilled.peft_config, "losses": distilled.losses}
    return StageOutput(figures, data, distilled.weights)
