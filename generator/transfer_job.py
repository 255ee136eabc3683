"""Trans-LoRA as a job: run (or resume) one transfer against the registry,
stage by stage (``generator.transfer`` and ``generator.distill`` hold the
stages themselves; ``generator.transfer_source`` what they start from).

    synthesize -> discriminator -> filter -> distill -> register

Each stage's output (its data, tensors and figures, wall time included) is
saved as a job artifact before the next stage starts; a resumed job reloads
it instead of recomputing, so a killed worker's successor starts at the first
unfinished stage. Sampling and training are seeded, so a recomputed stage
gives what the lost one would have. Only ``register`` writes an adapter, in
one transaction, under a name fixed by the job id: a retry that finds it
returns it instead of registering a second one.

Stages are also reused across jobs of one source adapter. Each of the first
three saves a key: a hash of everything its output depends on. The
discriminator depends only on the seeds and its settings, so a later transfer
of the same adapter (to any target) reuses it; the synthetic inputs depend on
the target model and the generation settings, and the filter on those two
keys. A transfer that changes only how the target is distilled (steps, rate,
weighting, soft filter) reuses an earlier job's inputs and
costs one distillation.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from generator.evaluation import Evaluator
from generator.lora_trainer import Tensors
from generator.transfer import (
    Discriminator,
    Synthesis,
    Synthesizer,
    TransferConfig,
    margins,
    model_sampler,
    realness,
    rejection_sample,
    synthesize,
    train_discriminator,
)
from generator.transfer_source import (
    TRANSFER_KIND,
    SourceTask,
    TransferRequest,
    distill_target,
    seeds_bytes,
    source_task,
)
from generator.zoo import SEEDS, weights_bytes
from registry.errors import Conflict, InvalidInput
from registry.models import Provenance
from registry.peft_format import PeftFiles
from registry.records import AdapterRecord
from registry.service import Parent, Registry

METHOD = "trans-lora"
STAGES = ("synthesize", "discriminator", "filter", "distill", "register")
# the share of the job's progress bar where each stage starts and ends
SPANS = {
    "synthesize": (0.0, 0.15),
    "discriminator": (0.15, 0.4),
    "filter": (0.4, 0.55),
    "distill": (0.55, 0.95),
    "register": (0.95, 1.0),
}
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


class StageStore(Protocol):
    """Where a running transfer keeps its stage outputs and reports progress
    (``api.worker.JobContext`` is one)."""

    def artifact(self, name: str) -> bytes | None: ...

    def save(self, name: str, data: bytes) -> None: ...

    def progress(
        self,
        fraction: float | None = None,
        *,
        stage: str | None = None,
        log_line: str | None = None,
        force: bool = False,
    ) -> None: ...


# -- stage outputs -----------------------------------------------------------------


@dataclass
class StageOutput:
    """One stage's checkpoint: figures and JSON data in the safetensors header, tensors in it."""

    figures: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    tensors: Tensors = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        meta = {"figures": json.dumps(self.figures), "data": json.dumps(self.data)}
        return save_safetensors({k: v.contiguous() for k, v in self.tensors.items()}, metadata=meta)

    @classmethod
    def from_bytes(cls, raw: bytes) -> StageOutput:
        # safetensors layout: an 8-byte little-endian header length, then the JSON header
        size = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + size]).get("__metadata__") or {}
        return cls(json.loads(meta["figures"]), json.loads(meta["data"]), load_safetensors(raw))


def artifact_name(stage: str) -> str:
    return f"{stage}.safetensors"


def summary(stage: str, figures: dict[str, Any]) -> str:
    shown = ", ".join(
        f"{k} {v}" for k, v in figures.items() if not isinstance(v, dict | list) and v is not None
    )
    return f"{stage}: {shown}"


class _Models:
    """The source and target base models, each loaded on first use (a resumed
    job that only registers loads neither)."""

    def __init__(self, registry: Registry, source: str, target: str) -> None:
        self.registry, self.source_name, self.target_name = registry, source, target

    @cached_property
    def source(self) -> Evaluator:
        return Evaluator.from_path(self.registry.base_model_path(self.source_name))

    @cached_property
    def target(self) -> Evaluator:
        return Evaluator.from_path(self.registry.base_model_path(self.target_name))


@dataclass
class _Run:
    registry: Registry
    job_id: int
    store: StageStore
    source: SourceTask
    target: str
    config: TransferConfig
    models: _Models
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stage(self, stage: str, compute: Callable[[], StageOutput]) -> StageOutput:
        start, end = SPANS[stage]
        raw = self.store.artifact(artifact_name(stage))
        if raw is not None:
            out = StageOutput.from_bytes(raw)
            self.store.progress(
                end, stage=stage, log_line=f"{stage}: reused the output of an earlier attempt"
            )
        else:
            self.store.progress(start, stage=stage, log_line=f"{stage}: started", force=True)
            t0 = time.perf_counter()
            out = compute()
            out.figures["wall_seconds"] = round(time.perf_counter() - t0, 2)
            self.store.save(artifact_name(stage), out.to_bytes())
            self.store.progress(end, stage=stage, log_line=summary(stage, out.figures), force=True)
        self.figures[stage] = out.figures
        return out

    def fraction(self, stage: str, done: float) -> None:
        start, end = SPANS[stage]
        self.store.progress(start + (end - start) * max(0.0, min(1.0, done)))

    def on_step(self, stage: str, steps: int) -> Callable[[int, float], None]:
        return lambda step, loss: self.fraction(stage, (step + 1) / steps)


def default_name(source: AdapterRecord, job_id: int) -> str:
    return f"{source.name[:150]}-trans-job{job_id}"


def run_transfer(
    registry: Registry, job_id: int, params: dict[str, Any], store: StageStore
) -> dict[str, Any]:
    """Run (or resume) transfer job ``job_id``; returns its result with every stage's figures."""
    request = TransferRequest.from_params(params)
    config = request.config
    source = source_task(registry, request.adapter_id)
    if request.target_base_model == source.record.base_model:
        raise InvalidInput(f"adapter {source.record.id} is already an adapter of that base model")
    target = registry.prepare_base_model(
        request.target_base_model, on_progress=lambda m: store.progress(log_line=m)
    ).name
    modules = target_modules(registry, source.record, target)
    name = request.name or default_name(source.record, job_id)
    earlier = registered_by(registry, target, name, job_id)
    if earlier is not None:  # an earlier attempt registered it and was lost before finishing
        store.progress(1.0, stage="register", log_line=f"register: adapter {earlier.id} (earlier)")
        return _result(earlier, source, earlier.meta.get("transfer", {}).get("stages", {}))
    run = _Run(
        registry,
        job_id,
        store,
        source,
        target,
        config,
        _Models(registry, source.record.base_model, target),
    )
    synth = run.stage("synthesize", lambda: _synthesize(run))
    disc = run.stage("discriminator", lambda: _discriminator(run, modules))
    filtered = run.stage("filter", lambda: _filter(run, synth, disc)).data
    distilled = run.stage("distill", lambda: _distill(run, filtered, disc, modules))
    record = _register(run, name, distilled)
    store.progress(1.0, stage="register", log_line=f"register: adapter {record.id} ({record.name})")
    return _result(record, source, run.figures)


def target_modules(registry: Registry, source: AdapterRecord, target: str) -> tuple[str, ...]:
    """The source adapter's target modules, which the target model must have too."""
    names = {path.rsplit(".", 1)[-1] for path in registry.linear_shapes(target)}
    modules = tuple(str(m) for m in source.target_modules)
    missing = [m for m in modules if m not in names]
    if missing:
        raise InvalidInput(
            f"target model {target} has no {', '.join(missing)} layers for the LoRA of adapter "
            f"{source.id}; its linear layers are named {', '.join(sorted(names)[:12])}"
        )
    return modules


def registered_by(registry: Registry, target: str, name: str, job_id: int) -> AdapterRecord | None:
    """The adapter job ``job_id`` registered as ``name``; ``InvalidInput`` if another
    adapter has that name (retrying would not help: the job fails with that reason)."""
    rec = registry.find_adapter(target, name)
    if rec is None:
        return None
    if rec.meta.get("transfer_job") != job_id:
        raise InvalidInput(
            f"an adapter named {name!r} already exists for {target}; choose another name"
        )
    return rec


def stage_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def earlier_stage(
    registry: Registry, adapter_id: int, stage: str, key: str, *, job_id: int
) -> tuple[int, StageOutput] | None:
    """The output of ``stage`` that another transfer of this adapter saved under ``key``."""
    name = artifact_name(stage)
    for job in registry.list_jobs(kind=TRANSFER_KIND, limit=1000):
        if job.id == job_id or job.params.get("adapter_id") != adapter_id:
            continue
        if name not in job.artifacts:
            continue
        raw = registry.job_artifact(job.id, name)
        if raw is None:
            continue
        out = StageOutput.from_bytes(raw)
        if out.data.get("key") == key:
            return job.id, out
    return None


def reused(run: _Run, stage: str, key: str) -> StageOutput | None:
    """An earlier job's output of ``stage`` with this key, its figures naming that job."""
    found = earlier_stage(run.registry, run.source.record.id, stage, key, job_id=run.job_id)
    if found is None:
        return None
    job_id, out = found
    out.figures = {**out.figures, "reused_from_job": job_id}
    return out


def synthesize_key(source: SourceTask, target: str, config: TransferConfig) -> str:
    return stage_key(
        {
            "target_base_model": target,
            "description": source.description,
            "seeds": source.seed_inputs(config),
            "settings": {k: getattr(config, k) for k in SYNTH_SETTINGS},
        }
    )


def _synthesize(run: _Run) -> StageOutput:
    cfg = run.config
    key = synthesize_key(run.source, run.target, cfg)
    earlier = reused(run, "synthesize", key)
    if earlier is not None:
        return earlier
    target = run.models.target
    synth = Synthesizer(
        model_sampler(target.model, target.tokenizer, cfg),
        run.source.description,
        run.source.seed_inputs(cfg),
        cfg,
        seed=cfg.seed,
    )
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


def _discriminator(run: _Run, modules: tuple[str, ...]) -> StageOutput:
    cfg, source = run.config, run.source
    key = discriminator_key(source, cfg)
    earlier = reused(run, "discriminator", key)
    if earlier is not None:
        return earlier
    src = run.models.source
    synth = Synthesizer(
        model_sampler(src.model, src.tokenizer, cfg),
        source.description,
        source.seed_inputs(cfg),
        cfg,
        seed=cfg.seed + 1,
    )
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


def _filter(run: _Run, synth_out: StageOutput, disc_out: StageOutput) -> StageOutput:
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


def _filter_anew(run: _Run, pool: list[str], disc_out: StageOutput) -> StageOutput:
    cfg, source = run.config, run.source
    disc = stage_discriminator(disc_out)
    target = run.models.target
    more = Synthesizer(
        model_sampler(target.model, target.tokenizer, cfg),
        source.description,
        source.seed_inputs(cfg),
        cfg,
        seed=cfg.seed + 2,
    )
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


def _distill(
    run: _Run, filtered: dict[str, Any], disc_out: StageOutput, modules: tuple[str, ...]
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


def _register(run: _Run, name: str, distilled: StageOutput) -> AdapterRecord:
    run.store.progress(SPANS["register"][0], stage="register", force=True)
    source = run.source.record
    peft_config = {
        **distilled.data["peft_config"],
        "base_model_name_or_path": run.target,
        "inference_mode": True,
    }
    carried: dict[str, Any] = {
        k: source.meta[k]
        for k in ("task", "family", "held_out", "labels", "source", "licence")
        if k in source.meta
    }
    losses = distilled.data["losses"]
    meta: dict[str, Any] = {
        **carried,
        "method": METHOD,
        "transfer_job": run.job_id,
        "source_adapter_id": source.id,
        "source_adapter_name": source.name,
        "source_base_model": source.base_model,
        "init": {"scheme": "shared-A", "init_seed": 0},
        "transfer": {"config": run.config.to_dict(), "stages": run.figures},
    }
    metrics = {
        "distill_loss_first": distilled.figures.get("loss_first"),
        "distill_loss_last": distilled.figures.get("loss_last"),
        "distill_agreement": distilled.figures.get("agreement"),
        "synthetic_kept": run.figures["filter"]["kept"],
        "synthetic_generated": run.figures["synthesize"]["generated"]
        + run.figures["filter"]["extra_generated"],
        "distill_steps": len(losses),
    }
    try:
        return run.registry.add_adapter(
            PeftFiles(config=peft_config, weights=weights_bytes(distilled.tensors)),
            base_model=run.target,
            description=source.description,
            name=name,
            provenance=Provenance.TRANSFERRED,
            parents=[Parent(source.id, role="source")],
            metrics={k: v for k, v in metrics.items() if v is not None},
            meta=meta,
            artifacts={SEEDS: seeds_bytes(run.source.seeds)},
        )
    except Conflict as exc:  # the name was taken meanwhile: by this job's earlier attempt?
        again = registered_by(run.registry, run.target, name, run.job_id)
        if again is None:
            # not a lost lease (which is what Conflict means to the worker): retry it
            raise RuntimeError(f"registering the transferred adapter failed: {exc}") from exc
        return again


def _result(record: AdapterRecord, source: SourceTask, figures: dict[str, Any]) -> dict[str, Any]:
    return {
        "adapter_id": record.id,
        "adapter_name": record.name,
        "target_base_model": record.base_model,
        "source_adapter_id": source.record.id,
        "source_base_model": source.record.base_model,
        "stages": figures,
        "wall_seconds": {
            stage: f.get("wall_seconds") for stage, f in figures.items() if isinstance(f, dict)
        },
    }
