"""A transfer as a job on the tiny models: one adapter registered, the soft filter,
stage outputs reused across jobs and attempts, exactly one result, refusals
before queueing, failures that end with their reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import pytest

from api.worker import HANDLERS, JobContext, run_one
from generator.transfer.job import run_transfer
from generator.transfer.run import StageOutput, artifact_name
from generator.transfer.source import (
    submit_transfer,
)
from generator.zoo.artifacts import SEEDS, read_seeds
from registry.errors import InvalidInput, UnknownBaseModel
from registry.service import Registry
from tests.conftest import make_lora
from tests.worlds import FAST, STAGE_ARTIFACTS, TransferWorld


def test_transfer_job_registers_one_adapter_for_the_target(
    transfer_store: TransferWorld, tmp_path: Path
) -> None:
    reg: Registry = transfer_store.registry
    source_id, target = transfer_store.source_id, transfer_store.target
    job = submit_transfer(reg, source_id, target, samples=4, config={**FAST, "samples": 3})
    assert job.kind == "transfer" and job.params["samples"] == 4
    done = run_one(reg, "w1", HANDLERS)
    assert done is not None
    assert done.state == "succeeded", done.error
    assert done.result is not None
    stages = done.result["stages"]
    assert list(stages) == ["synthesize", "discriminator", "filter", "distill"]
    assert stages["synthesize"]["generated"] >= stages["synthesize"]["unique"] > 0
    assert stages["discriminator"]["real"] == 5 and stages["discriminator"]["synthetic"] == 4
    f = stages["filter"]
    assert f["scored"] == f["kept"] + f["surplus"] + f["rejected"] and f["kept"] <= 4
    assert stages["distill"]["steps"] == FAST["distill_steps"] and "loss_last" in stages["distill"]
    assert all(s["wall_seconds"] >= 0 for s in stages.values())
    assert sorted(done.artifacts) == sorted(STAGE_ARTIFACTS)
    for stage in ("synthesize", "discriminator", "filter", "distill", "register"):
        assert f"{stage}: " in done.log
    # the filter keeps every scored input's p(real): above 1/2 exactly for the kept ones
    raw = reg.job_artifact(done.id, artifact_name("filter"))
    assert raw is not None
    saved = StageOutput.from_bytes(raw).data
    real = saved["realness"]
    assert (
        set(real) == {*saved["kept"], *saved["rejected"]} and len(real) == f["kept"] + f["rejected"]
    )
    assert all(real[t] > 0.5 for t in saved["kept"]) and all(
        real[t] <= 0.5 for t in saved["rejected"]
    )

    rec = reg.get_adapter(done.result["adapter_id"])
    assert rec.base_model == target and rec.provenance == "transferred"
    assert [(p.adapter_id, p.role) for p in rec.parents] == [(source_id, "source")]
    assert (
        rec.meta["method"] == "trans-lora" and rec.meta["source_base_model"] == transfer_store.base
    )
    assert rec.meta["labels"] == ["yes", "no"] and rec.meta["transfer"]["stages"] == stages
    assert rec.description == reg.get_adapter(source_id).description
    assert read_seeds(reg.artifact(rec.id, SEEDS)) == transfer_store.task.seeds()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = reg.export_adapter(rec.id, tmp_path / "moved")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(target), str(out))
    assert sum("lora_B" in n for n, _ in model.named_parameters()) == 3 * 2  # 3 layers, q and v


def test_soft_filter_distils_on_every_scored_input(transfer: TransferWorld) -> None:
    reg: Registry = transfer.registry
    settings = {**FAST, "samples": 3, "max_rounds": 1, "soft_filter": True}
    job = submit_transfer(reg, transfer.source_id, transfer.target, config=settings)
    done = run_one(reg, "w-soft", HANDLERS)
    assert done is not None
    assert done.id == job.id and done.state == "succeeded", done.error
    assert done.result is not None
    stages = done.result["stages"]
    f, d = stages["filter"], stages["distill"]
    seeds = len(transfer.task.seeds())
    # every scored input (the synthesizer never repeats a seed) and the seeds
    assert d["examples"] == f["kept"] + f["rejected"] + seeds
    assert 0.0 < d["trusted_share"] <= 1.0
    rec = reg.get_adapter(done.result["adapter_id"])
    assert rec.meta["transfer"]["config"]["soft_filter"] is True


def test_a_transfer_that_changes_only_distillation_reuses_the_inputs(
    transfer: TransferWorld,
) -> None:
    """Jobs of one adapter share stage outputs by key: new distillation settings reuse an
    earlier job's synthetic and filtered inputs; new generation settings do not."""
    reg: Registry = transfer.registry
    source_id, target = transfer.source_id, transfer.target

    def run(config: dict[str, Any]) -> dict[str, Any]:
        job = submit_transfer(reg, source_id, target, config={**FAST, "seed": 11, **config})
        done = run_one(reg, f"w-reuse-{job.id}", HANDLERS)
        assert done is not None
        assert done.id == job.id and done.state == "succeeded", done.error
        assert done.result is not None
        return {"id": job.id, **done.result["stages"]}

    def data(job_id: int, stage: str) -> dict[str, Any]:
        raw = reg.job_artifact(job_id, artifact_name(stage))
        assert raw is not None
        return StageOutput.from_bytes(raw).data

    first = run({})
    assert not any("reused_from_job" in first[s] for s in ("synthesize", "filter"))
    again = run({"distill_steps": 4, "balance_labels": True, "soft_filter": True})
    for stage in ("synthesize", "discriminator", "filter"):
        assert again[stage]["reused_from_job"] == first["id"], stage
    assert data(again["id"], "filter")["kept"] == data(first["id"], "filter")["kept"]
    assert again["distill"]["steps"] == 4 and first["distill"]["steps"] == FAST["distill_steps"]
    # more samples: new synthetic inputs and a new filter, the same discriminator
    more = run({"samples": FAST["samples"] + 1})
    assert "reused_from_job" not in more["synthesize"]
    assert "reused_from_job" not in more["filter"]
    assert more["discriminator"]["reused_from_job"] in {first["id"], again["id"]}
    assert data(more["id"], "synthesize")["key"] != data(first["id"], "synthesize")["key"]


def test_a_job_resumes_after_its_last_finished_stage(
    transfer_store: TransferWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    import generator.transfer.stages as stages

    reg: Registry = transfer_store.registry
    job = submit_transfer(reg, transfer_store.source_id, transfer_store.target, config=FAST)

    def crash_at_filter(ctx: JobContext) -> dict[str, Any]:
        real_progress = ctx.progress

        def progress(*args: Any, **kw: Any) -> None:
            if kw.get("stage") == "filter":
                raise RuntimeError("power cut")
            real_progress(*args, **kw)

        monkeypatch.setattr(ctx, "progress", progress)
        return HANDLERS["transfer"](ctx)

    first = run_one(reg, "w1", {"transfer": crash_at_filter})
    assert first is not None and first.state == "queued" and "power cut" in (first.error or "")
    assert sorted(first.artifacts) == sorted(STAGE_ARTIFACTS[:2])
    kept = {name: reg.job_artifact(job.id, name) for name in first.artifacts}

    def recomputed(*args: Any, **kw: Any) -> NoReturn:
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(stages, "synthesize", recomputed)
    monkeypatch.setattr(stages, "train_discriminator", recomputed)
    second = run_one(reg, "w2", HANDLERS)
    assert second is not None
    assert second.state == "succeeded", second.error
    assert second.attempts == 2
    assert "synthesize: reused the output of an earlier attempt" in second.log
    assert "discriminator: reused the output of an earlier attempt" in second.log
    assert all(reg.job_artifact(job.id, n) == raw for n, raw in kept.items())
    assert len(reg.list_adapters(provenance="transferred")) == 1


def test_exactly_one_result_and_the_discriminator_is_trained_once(transfer: TransferWorld) -> None:
    reg: Registry = transfer.registry
    source_id, target = transfer.source_id, transfer.target
    first = submit_transfer(reg, source_id, target, config=FAST)
    done = run_one(reg, "w1", HANDLERS)
    assert done is not None
    assert done.state == "succeeded", done.error
    assert done.result is not None
    adapter_id = done.result["adapter_id"]

    class Store:  # a worker that registered, then died before marking the job finished
        def artifact(self, name: str) -> bytes | None:
            return reg.job_artifact(first.id, name)

        def save(self, name: str, data: bytes) -> None:
            raise AssertionError("nothing is recomputed once registered")

        def progress(self, *args: Any, **kw: Any) -> None:
            pass

    again = run_transfer(reg, first.id, first.params, Store())
    assert again["adapter_id"] == adapter_id
    count = len(
        [
            a
            for a in reg.list_adapters(provenance="transferred")
            if a.meta["transfer_job"] == first.id
        ]
    )
    assert count == 1

    # another transfer of the same adapter reuses its discriminator, registers its own adapter
    second = submit_transfer(reg, source_id, target, config={**FAST, "samples": 3})
    done2 = run_one(reg, "w1", HANDLERS)
    assert done2 is not None
    assert done2.state == "succeeded", done2.error
    assert done2.result is not None
    disc = done2.result["stages"]["discriminator"]
    assert disc["reused_from_job"] == first.id
    assert done2.result["adapter_id"] != adapter_id
    raw = reg.job_artifact(second.id, artifact_name("discriminator"))
    assert raw is not None and StageOutput.from_bytes(raw).figures["reused_from_job"] == first.id

    # a name another adapter holds: refused when asked for, and (taken meanwhile) when run
    taken = reg.get_adapter(adapter_id).name
    with pytest.raises(InvalidInput, match="already exists"):
        submit_transfer(reg, source_id, target, config=FAST, name=taken)
    params = {"adapter_id": source_id, "target_base_model": target, "config": FAST, "name": taken}
    third = reg.submit_job("transfer", params)
    failed = run_one(reg, "w1", HANDLERS)
    assert failed is not None and failed.id == third.id and failed.state == "failed"
    assert "already exists" in (failed.error or "") and failed.attempts == 1


def test_bad_transfers_are_refused_before_they_are_queued(
    transfer: TransferWorld, tmp_path: Path
) -> None:
    reg: Registry = transfer.registry
    plain = reg.add_adapter(
        make_lora(Path(transfer.base), tmp_path / "plain"),
        base_model=transfer.base,
        description="Seedless adapter for a test.",
    )
    queued = reg.count_jobs()
    with pytest.raises(InvalidInput, match="no seed examples"):
        submit_transfer(reg, plain.id, transfer.target)
    with pytest.raises(UnknownBaseModel):
        submit_transfer(reg, transfer.source_id, "no-such-model")
    with pytest.raises(UnknownBaseModel):
        submit_transfer(reg, transfer.source_id, "bad\x00name")
    with pytest.raises(InvalidInput, match="already an adapter of"):
        submit_transfer(reg, transfer.source_id, transfer.base)
    with pytest.raises(InvalidInput, match="samples must be"):
        submit_transfer(reg, transfer.source_id, transfer.target, samples=-3)
    assert reg.count_jobs() == queued


def test_a_job_that_keeps_failing_ends_failed_with_the_reason(
    transfer_store: TransferWorld, tmp_path: Path
) -> None:
    reg: Registry = transfer_store.registry
    broken = tmp_path / "broken-target"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((Path(transfer_store.target) / name).read_bytes())
    job = reg.submit_job(
        "transfer",
        {"adapter_id": transfer_store.source_id, "target_base_model": str(broken), "config": FAST},
        max_attempts=2,
    )
    for _ in range(3):
        run_one(reg, "w1", HANDLERS)
    final = reg.get_job(job.id)
    assert final.state == "failed" and final.attempts == 2
    assert "OSError" in (final.error or "") and "model.safetensors" in (final.error or "")
    assert reg.list_adapters(provenance="transferred") == []
