"""Trans-LoRA as a job: run (or resume) one transfer against the registry,
stage by stage (``generator.transfer.stages`` runs each stage,
``generator.transfer.run`` keeps their outputs, ``generator.transfer.source``
holds what they start from).

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

from typing import Any

from generator.transfer.run import SPANS, Models, Run, StageOutput, StageStore
from generator.transfer.source import (
    SourceTask,
    TransferRequest,
    source_task,
)
from generator.transfer.stages import (
    discriminator_stage,
    distill_stage,
    filter_stage,
    synthesize_stage,
)
from generator.zoo.artifacts import SEEDS, seeds_bytes
from registry.errors import Conflict, InvalidInput
from registry.lora_spec import weights_bytes
from registry.models import Provenance
from registry.peft_format import PeftFiles
from registry.records import AdapterRecord
from registry.service import Parent, Registry

METHOD = "trans-lora"


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
    run = Run(
        registry,
        job_id,
        store,
        source,
        target,
        config,
        Models(registry, source.record.base_model, target),
    )
    synth = run.stage("synthesize", lambda: synthesize_stage(run))
    disc = run.stage("discriminator", lambda: discriminator_stage(run, modules))
    filtered = run.stage("filter", lambda: filter_stage(run, synth, disc)).data
    distilled = run.stage("distill", lambda: distill_stage(run, filtered, disc, modules))
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


def _register(run: Run, name: str, distilled: StageOutput) -> AdapterRecord:
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
