"""Trans-LoRA transfers on tiny random models of two architectures: a Llama
with a chat-template character tokenizer (the source, with a tiny zoo
adapter and its seeds) and a Gemma3 with another vocabulary, width and depth
and no chat template (the target). Each stage, the job (resume after a stage,
exactly one result, failures), the REST endpoint, the Ray engine on a local
Ray instance, and a real worker process killed in the middle of a job."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from api.worker import HANDLERS, run_one
from generator.tasks.evaluation import Evaluator
from generator.tasks.scoring import label_logprobs
from generator.tasks.task import Example
from generator.transfer.config import TransferConfig
from generator.transfer.discriminator import (
    NO,
    YES,
    discriminator_description,
    real_variants,
    realness,
    rejection_sample,
    train_discriminator,
)
from generator.transfer.job import run_transfer
from generator.transfer.run import StageOutput, artifact_name
from generator.transfer.source import (
    source_task,
    student_config,
    submit_transfer,
    teacher_label_probs,
)
from generator.transfer.synthesis import (
    Synthesis,
    Synthesizer,
    clean_input,
    fewshot_prompt,
    model_sampler,
    sample_completions,
    synthesize,
)
from generator.zoo.artifacts import SEEDS, read_seeds, seed_artifacts
from generator.zoo.build import build_zoo
from generator.zoo.trainer import TrainConfig
from registry.blobs import write_atomic
from registry.errors import InvalidInput, UnknownBaseModel
from registry.service import Registry
from registry.settings import Settings
from tests.conftest import make_lora
from tests.test_worker import wait_for
from tests.test_zoo import tiny_task

# small enough for 2 CPU cores, large enough that every stage does real work
FAST: dict[str, Any] = dict(
    samples=4, few_shot=3, gen_batch=4, max_new_tokens=12, max_rounds=2, min_kept=0,
    disc_negatives=4, disc_rank=4, disc_steps=8, disc_lr=2e-2,
    distill_steps=6, distill_batch=4, distill_lr=1e-2, max_answer_tokens=6,
)  # fmt: skip
STAGE_ARTIFACTS = [artifact_name(s) for s in ("synthesize", "discriminator", "filter", "distill")]


def transfer_world(
    root: Path, tiny_base: Path, tiny_gemma: Path, embedder, url: str | None = None
) -> dict:  # type: ignore[no-untyped-def]
    """A registry holding one tiny zoo adapter (task: "mentions a cat", with its seeds)."""
    settings = Settings(
        home=root / "home",
        database_url=url or f"sqlite:///{root}/r.db",
        model_cache=root / "models",
    )
    reg = Registry(settings, embedder=embedder)
    task = tiny_task("cat", "cat")
    config = TrainConfig(rank=4, alpha=8, steps=6, batch_size=8, lr=1e-2, snapshots=2)
    [entry] = build_zoo(reg, [task], base_model=str(tiny_base), config=config, evaluate=False)
    return {
        "registry": reg,
        "source_id": entry.adapter_id,
        "base": str(tiny_base),
        "target": str(tiny_gemma),
        "settings": settings,
        "task": task,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, tiny_gemma: Path, embedder):  # type: ignore[no-untyped-def]
    w = transfer_world(tmp_path_factory.mktemp("transfer"), tiny_base, tiny_gemma, embedder)
    yield w
    w["registry"].close()


@pytest.fixture
def store_world(db_url: str, tmp_path: Path, tiny_base: Path, tiny_gemma: Path, embedder):  # type: ignore[no-untyped-def]
    """The same world on SQLite and on PostgreSQL (for the tests that exercise the job store)."""
    w = transfer_world(tmp_path, tiny_base, tiny_gemma, embedder, url=db_url)
    yield w
    w["registry"].close()


@pytest.fixture(scope="module")
def models(tiny_base: Path, tiny_gemma: Path) -> dict[str, Evaluator]:
    return {"source": Evaluator.from_path(tiny_base), "target": Evaluator.from_path(tiny_gemma)}


# -- configuration and pure stages ---------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"samples": 0}, "samples must be an integer"),
        ({"samples": 2.5}, "samples must be an integer"),
        ({"top_p": 1.5}, "top_p must be a number"),
        ({"temperature": float("nan")}, "temperature must be a number"),
        ({"disc_lr": True}, "disc_lr must be a number"),
        ({"min_kept": 10, "samples": 4}, "min_kept must be at most samples"),
        ({"max_rounds": -1}, "max_rounds must be an integer"),
        ({"distill_stpes": 3}, "unknown transfer settings distill_stpes"),
        ({"balance_labels": "yes"}, "balance_labels must be true or false"),
        ({"label_prompts": True}, "unknown transfer settings label_prompts"),  # removed
    ],
)
def test_bad_settings_name_the_value(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        TransferConfig.from_dict(settings)


def test_fewshot_prompt_lists_the_seeds_and_opens_the_next_number() -> None:
    prompt = fewshot_prompt("Does it rain?", ["wet streets", "blue sky"])
    assert prompt.splitlines() == [
        "Task: Does it rain?",
        "Here are 3 example inputs for this task:",
        "1. wet streets",
        "2. blue sky",
        "3.",
    ]


def test_inputs_keep_their_line_breaks_and_prompts_show_them_on_one_line() -> None:
    """A headline and its lead stay two lines (the source adapter learned them so), while
    the generation prompt lists each input on one numbered line, breaks as a marker."""
    assert (
        clean_input("  Rain  due \n\n  Wet   streets ahead \n", 400)
        == "Rain due\nWet streets ahead"
    )
    assert clean_input("one two\nthree", 6) == "one tw"
    prompt = fewshot_prompt("Weather news?", ["Rain due\nWet streets ahead", "Sun"])
    assert prompt.splitlines()[2:] == ["1. Rain due \\n Wet streets ahead", "2. Sun", "3."]


def test_synthesizer_drops_empties_seed_copies_and_duplicates() -> None:
    batches = [
        ["", " cat dog  sun", "a new line", "A NEW   line", "7. numbered one", "  "],
        ["a new line", "another \\n with a break", "fresh", "moon\\nfish"],
    ]
    seeds_seen: list[int] = []

    def sample(prompts: list[str], seed: int) -> list[str]:
        seeds_seen.append(seed)
        assert len(prompts) == 6 and all(p.endswith("\n4.") for p in prompts)
        return batches.pop(0)[: len(prompts)]

    cfg = TransferConfig(gen_batch=6, few_shot=3)
    synth = Synthesizer(
        sample, "Mentions a cat?", ["cat dog sun", "moon\nfish", "tree"], cfg, seed=3
    )
    stats = synthesize(synth, 10, max_batches=2)
    # a continuation's line-break markers come back as line breaks
    assert stats.inputs == ["a new line", "numbered one", "another\nwith a break", "fresh"]
    assert (stats.generated, stats.empty, stats.seed_copies, stats.duplicates) == (10, 2, 2, 2)
    assert stats.batches == 2 and len(set(seeds_seen)) == 2  # each batch samples anew
    with pytest.raises(InvalidInput, match="non-empty seed"):
        Synthesizer(sample, "x", ["  "], cfg, seed=0)


def test_rejection_sampling_stops_at_the_count_or_the_budget() -> None:
    batches = iter([["ab", "xx", "ac"], ["ad", "ae", "af"], ["zz"]])

    def more(stats: Synthesis) -> list[str]:
        new = next(batches)
        stats.generated += len(new)
        return new

    def accept(texts: list[str]) -> list[bool]:
        return ["a" in t for t in texts]

    out = rejection_sample(["a1", "b1"], accept, more, wanted=4, max_rounds=5)
    assert out.kept == ["a1", "ab", "ac", "ad"] and out.rejected == ["b1", "xx"]
    assert out.rounds == 2 and out.surplus == 2
    figures = out.figures(4)
    assert figures["scored"] == figures["kept"] + figures["surplus"] + figures["rejected"] == 8
    short = rejection_sample(["b"], accept, lambda s: ["c"], wanted=3, max_rounds=2)
    assert short.kept == [] and short.rounds == 2 and short.figures(3)["shortfall"] == 3


def test_real_variants_vary_in_length() -> None:
    seeds = ["one two three four five six seven eight", "a b c"]
    out = real_variants(seeds, 8)
    assert out[:2] == seeds and len(out) == 8
    assert {len(x.split()) for x in out[::2]} == {8, 6, 4, 3}
    assert all(len(x.split()) >= 3 for x in out)
    head = real_variants(["Rain due today\nWet streets ahead soon"], 3)
    assert head == [
        "Rain due today\nWet streets ahead soon",
        "Rain due today\nWet streets ahead",  # 6 of the 7 words, then 4
        "Rain due today\nWet",
    ]


def test_seeds_and_labels_are_checked() -> None:
    good = b'{"input": "cat sun", "output": "yes"}\n\n{"input": "dog", "output": "no"}\n'
    assert read_seeds(good) == (Example("cat sun", "yes"), Example("dog", "no"))
    for bad, message in [
        (b"not json", "not JSON"),
        (b'{"input": 3, "output": "x"}', "must be"),
        (b'{"input": " ", "output": "x"}', "no seed example"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            read_seeds(bad)
    artifacts, meta = seed_artifacts(good, ["yes", "no"])
    assert read_seeds(artifacts[SEEDS]) == read_seeds(good) and meta == {"labels": ["yes", "no"]}
    with pytest.raises(InvalidInput, match="not among the labels"):
        seed_artifacts(good, ["yes", "maybe"])


# -- stages on the tiny models ---------------------------------------------------------


def test_target_samples_one_line_each_reproducibly(models: dict[str, Evaluator]) -> None:
    target = models["target"]
    cfg = TransferConfig(max_new_tokens=16)
    prompts = [fewshot_prompt("Mentions a cat?", ["cat dog sun", "moon fish tree"])] * 3
    first = sample_completions(target.model, target.tokenizer, prompts, cfg, seed=5)
    again = sample_completions(target.model, target.tokenizer, prompts, cfg, seed=5)
    assert len(first) == 3 and first == again
    assert all("\n" not in t for t in first)
    assert len(set(first)) > 1  # sampled, not greedy


def test_discriminator_learns_real_from_source_synthetic(world, models) -> None:  # type: ignore[no-untyped-def]
    source = models["source"]
    cfg = TransferConfig(**{**FAST, "disc_steps": 40, "disc_negatives": 8})
    task = source_task(world["registry"], world["source_id"])
    real = task.seed_inputs(cfg)
    synth = Synthesizer(
        model_sampler(source.model, source.tokenizer, cfg), task.description, real, cfg, seed=1
    )
    negatives = synthesize(synth, cfg.disc_negatives, max_batches=6).inputs
    assert len(negatives) == cfg.disc_negatives
    fmt = source.format
    texts = real + negatives
    prompts = [fmt.prompt_ids(discriminator_description(task.description), t) for t in texts]
    answers = [fmt.answer_ids(YES), fmt.answer_ids(NO)]

    def margins(model: Any) -> list[float]:  # log p(yes) - log p(no) per text
        scores = label_logprobs(model, prompts, answers, pad_id=source.pad_id)  # (N, 2)
        return (scores[:, 0] - scores[:, 1]).tolist()

    def gap(m: list[float]) -> float:  # mean margin of the real texts over the synthetic ones
        return sum(m[: len(real)]) / len(real) - sum(m[len(real) :]) / len(negatives)

    before = {k: v.clone() for k, v in source.model.state_dict().items()}
    untrained = margins(source.model)
    disc = train_discriminator(
        source.model, source.format, task.description, real, negatives, cfg, ("q_proj", "v_proj")
    )
    assert all(torch.equal(v, source.model.state_dict()[k]) for k, v in before.items())
    assert disc.losses[-1] < disc.losses[0] and disc.real == len(real)
    with source.attached(disc.peft_config, disc.weights) as m:
        trained = margins(m)
    # every real input ranks above every synthetic one, by a margin it did not have before
    assert min(trained[: len(real)]) > max(trained[len(real) :]), trained
    assert gap(trained) > gap(untrained) + 1.0
    # p(real) is above one half exactly for the texts with p(yes) > p(no)
    p_real = realness(source, disc, task.description, texts)
    assert [p > 0.5 for p in p_real] == [x > 0 for x in trained]


def test_balanced_weights_make_each_teacher_label_count_alike() -> None:
    from generator.transfer.distill import balanced_weights

    # 6 inputs the teacher calls "yes", 2 it calls "no": a synthetic skew
    teacher = torch.tensor([[0.9, 0.1]] * 6 + [[0.2, 0.8]] * 2)
    w = balanced_weights(teacher)
    assert w.shape == (8,) and torch.isclose(w.mean(), torch.tensor(1.0))
    assert torch.isclose(w[:6].sum(), w[6:].sum())  # each label now weighs half
    three = balanced_weights(torch.tensor([[0.8, 0.1, 0.1]] * 3 + [[0.1, 0.1, 0.8]]))
    assert torch.isclose(three[:3].sum(), three[3])  # a label nobody picked takes nothing
    capped = balanced_weights(torch.tensor([[0.9, 0.1]] * 99 + [[0.1, 0.9]]), max_weight=5.0)
    assert float(capped.max()) == 5.0  # one rare input cannot take over


def test_distillation_moves_the_target_towards_the_teacher(world, models) -> None:  # type: ignore[no-untyped-def]
    from generator.transfer.distill import distill_labels

    source, target = models["source"], models["target"]
    task = source_task(world["registry"], world["source_id"])
    inputs = [e.input for e in world["task"].train[:12]]
    teacher = teacher_label_probs(source, task.adapter, task.description, inputs, task.labels)
    assert teacher.shape == (12, 2) and torch.allclose(teacher.sum(-1), torch.ones(12))

    def kl_to_teacher(weights: Any = None) -> float:
        prompts = [target.format.prompt_ids(task.description, x) for x in inputs]
        labels = [target.format.answer_ids(label) for label in task.labels]
        if weights is None:
            scores = label_logprobs(target.model, prompts, labels, pad_id=target.pad_id)
        else:
            with target.attached(*weights) as m:
                scores = label_logprobs(m, prompts, labels, pad_id=target.pad_id)
        log_student = torch.log_softmax(scores, -1)
        return float((teacher * (teacher.log() - log_student)).sum(-1).mean())

    cfg = TransferConfig(**{**FAST, "distill_steps": 20})
    train = student_config(task.record, cfg, ("q_proj", "v_proj"))
    out = distill_labels(
        target.model, target.format, task.description, inputs, task.labels, teacher, train
    )
    assert out.mode == "labels" and len(out.losses) == 20 and 0.0 <= (out.agreement or 0) <= 1
    # another architecture: the student's LoRA has the Gemma's depth and width
    a = out.weights["base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight"]
    assert a.shape == (task.record.rank, 48)
    assert kl_to_teacher((out.peft_config, out.weights)) < kl_to_teacher()
    weighted = distill_labels(
        target.model, target.format, task.description, inputs, task.labels, teacher, train,
        weights=torch.linspace(0.5, 2.0, 12),
    )  # fmt: skip
    assert weighted.losses != out.losses  # the weights reach the loss
    assert kl_to_teacher((weighted.peft_config, weighted.weights)) < kl_to_teacher()
    with pytest.raises(ValueError, match="weights must be"):
        distill_labels(
            target.model, target.format, task.description, inputs, task.labels, teacher, train,
            weights=torch.ones(3),
        )  # fmt: skip

    # ``draw``: an input drawn with probability 0 never reaches a batch (its NaN
    # target would make the loss NaN), and the draws are seeded
    poisoned = teacher.clone()
    poisoned[6:] = float("nan")
    draw = torch.tensor([1.0, 0.2, 0.9, 0.5, 0.7, 0.3] + [0.0] * 6)

    def drawn() -> Any:
        return distill_labels(
            target.model, target.format, task.description, inputs, task.labels, poisoned,
            train, draw=draw,
        )  # fmt: skip

    first = drawn()
    assert all(math.isfinite(x) for x in first.losses) and first.losses == drawn().losses
    for bad in (torch.zeros(12), torch.ones(3), -torch.ones(12)):
        with pytest.raises(ValueError, match="draw must be"):
            distill_labels(
                target.model, target.format, task.description, inputs, task.labels, teacher,
                train, draw=bad,
            )  # fmt: skip


def test_free_form_tasks_distil_the_teachers_answers(world, models) -> None:  # type: ignore[no-untyped-def]
    from generator.transfer.distill import distill_answers, teacher_answers

    source, target = models["source"], models["target"]
    task = source_task(world["registry"], world["source_id"])
    inputs = ["cat dog sun", "moon fish tree", "car bird dog"]
    answers = teacher_answers(source, task.adapter, task.description, inputs, max_new_tokens=5)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    cfg = TransferConfig(**FAST)
    train = student_config(task.record, cfg, ("q_proj", "v_proj"))
    answers = [a or "yes" for a in answers]  # a random teacher may say nothing
    out = distill_answers(target.model, target.format, task.description, inputs, answers, train)
    assert out.mode == "answers" and out.examples == 3 and len(out.losses) == cfg.distill_steps


# -- the job ------------------------------------------------------------------------------


def test_transfer_job_registers_one_adapter_for_the_target(store_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg: Registry = store_world["registry"]
    source_id, target = store_world["source_id"], store_world["target"]
    job = submit_transfer(reg, source_id, target, samples=4, config={**FAST, "samples": 3})
    assert job.kind == "transfer" and job.params["samples"] == 4
    done = run_one(reg, "w1", HANDLERS)
    assert done is not None and done.state == "succeeded", done.error
    stages = done.result["stages"]  # type: ignore[index]
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
    saved = StageOutput.from_bytes(reg.job_artifact(done.id, artifact_name("filter"))).data
    real = saved["realness"]
    assert (
        set(real) == {*saved["kept"], *saved["rejected"]} and len(real) == f["kept"] + f["rejected"]
    )
    assert all(real[t] > 0.5 for t in saved["kept"]) and all(
        real[t] <= 0.5 for t in saved["rejected"]
    )

    rec = reg.get_adapter(done.result["adapter_id"])  # type: ignore[index]
    assert rec.base_model == target and rec.provenance == "transferred"
    assert [(p.adapter_id, p.role) for p in rec.parents] == [(source_id, "source")]
    assert (
        rec.meta["method"] == "trans-lora" and rec.meta["source_base_model"] == store_world["base"]
    )
    assert rec.meta["labels"] == ["yes", "no"] and rec.meta["transfer"]["stages"] == stages
    assert rec.description == reg.get_adapter(source_id).description
    assert read_seeds(reg.artifact(rec.id, SEEDS)) == store_world["task"].seeds()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = reg.export_adapter(rec.id, tmp_path / "moved")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(target), str(out))
    assert sum("lora_B" in n for n, _ in model.named_parameters()) == 3 * 2  # 3 layers, q and v


def test_soft_filter_distils_on_every_scored_input(world) -> None:  # type: ignore[no-untyped-def]
    reg: Registry = world["registry"]
    settings = {**FAST, "samples": 3, "max_rounds": 1, "soft_filter": True}
    job = submit_transfer(reg, world["source_id"], world["target"], config=settings)
    done = run_one(reg, "w-soft", HANDLERS)
    assert done is not None and done.id == job.id and done.state == "succeeded", done.error
    stages = done.result["stages"]  # type: ignore[index]
    f, d = stages["filter"], stages["distill"]
    seeds = len(world["task"].seeds())
    # every scored input (the synthesizer never repeats a seed) and the seeds
    assert d["examples"] == f["kept"] + f["rejected"] + seeds
    assert 0.0 < d["trusted_share"] <= 1.0
    rec = reg.get_adapter(done.result["adapter_id"])  # type: ignore[index]
    assert rec.meta["transfer"]["config"]["soft_filter"] is True


def test_a_transfer_that_changes_only_distillation_reuses_the_inputs(world) -> None:  # type: ignore[no-untyped-def]
    """Jobs of one adapter share stage outputs by key: new distillation settings reuse an
    earlier job's synthetic and filtered inputs; new generation settings do not."""
    reg: Registry = world["registry"]
    source_id, target = world["source_id"], world["target"]

    def run(config: dict[str, Any]) -> dict[str, Any]:
        job = submit_transfer(reg, source_id, target, config={**FAST, "seed": 11, **config})
        done = run_one(reg, f"w-reuse-{job.id}", HANDLERS)
        assert done is not None and done.id == job.id and done.state == "succeeded", done.error
        return {"id": job.id, **done.result["stages"]}  # type: ignore[dict-item]

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


def test_a_job_resumes_after_its_last_finished_stage(store_world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import generator.transfer.stages as stages

    reg: Registry = store_world["registry"]
    job = submit_transfer(reg, store_world["source_id"], store_world["target"], config=FAST)

    def crash_at_filter(ctx):  # type: ignore[no-untyped-def]
        real_progress = ctx.progress

        def progress(*args, **kw):  # type: ignore[no-untyped-def]
            if kw.get("stage") == "filter":
                raise RuntimeError("power cut")
            real_progress(*args, **kw)

        ctx.progress = progress
        return HANDLERS["transfer"](ctx)

    first = run_one(reg, "w1", {"transfer": crash_at_filter})
    assert first is not None and first.state == "queued" and "power cut" in (first.error or "")
    assert sorted(first.artifacts) == sorted(STAGE_ARTIFACTS[:2])
    kept = {name: reg.job_artifact(job.id, name) for name in first.artifacts}

    def recomputed(*args, **kw):  # type: ignore[no-untyped-def]
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(stages, "synthesize", recomputed)
    monkeypatch.setattr(stages, "train_discriminator", recomputed)
    second = run_one(reg, "w2", HANDLERS)
    assert second is not None and second.state == "succeeded", second.error
    assert second.attempts == 2
    assert "synthesize: reused the output of an earlier attempt" in second.log
    assert "discriminator: reused the output of an earlier attempt" in second.log
    assert all(reg.job_artifact(job.id, n) == raw for n, raw in kept.items())
    assert len(reg.list_adapters(provenance="transferred")) == 1


def test_exactly_one_result_and_the_discriminator_is_trained_once(world) -> None:  # type: ignore[no-untyped-def]
    reg: Registry = world["registry"]
    source_id, target = world["source_id"], world["target"]
    first = submit_transfer(reg, source_id, target, config=FAST)
    done = run_one(reg, "w1", HANDLERS)
    assert done is not None and done.state == "succeeded", done.error
    adapter_id = done.result["adapter_id"]  # type: ignore[index]

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
    assert done2 is not None and done2.state == "succeeded", done2.error
    disc = done2.result["stages"]["discriminator"]  # type: ignore[index]
    assert disc["reused_from_job"] == first.id
    assert done2.result["adapter_id"] != adapter_id  # type: ignore[index]
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


def test_bad_transfers_are_refused_before_they_are_queued(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg: Registry = world["registry"]
    plain = reg.add_adapter(
        make_lora(Path(world["base"]), tmp_path / "plain"),
        base_model=world["base"],
        description="Seedless adapter for a test.",
    )
    queued = reg.count_jobs()
    with pytest.raises(InvalidInput, match="no seed examples"):
        submit_transfer(reg, plain.id, world["target"])
    with pytest.raises(UnknownBaseModel):
        submit_transfer(reg, world["source_id"], "no-such-model")
    with pytest.raises(UnknownBaseModel):
        submit_transfer(reg, world["source_id"], "bad\x00name")
    with pytest.raises(InvalidInput, match="already an adapter of"):
        submit_transfer(reg, world["source_id"], world["base"])
    with pytest.raises(InvalidInput, match="samples must be"):
        submit_transfer(reg, world["source_id"], world["target"], samples=-3)
    assert reg.count_jobs() == queued


def test_a_job_that_keeps_failing_ends_failed_with_the_reason(store_world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg: Registry = store_world["registry"]
    broken = tmp_path / "broken-target"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((Path(store_world["target"]) / name).read_bytes())
    job = reg.submit_job(
        "transfer",
        {"adapter_id": store_world["source_id"], "target_base_model": str(broken), "config": FAST},
        max_attempts=2,
    )
    for _ in range(3):
        run_one(reg, "w1", HANDLERS)
    final = reg.get_job(job.id)
    assert final.state == "failed" and final.attempts == 2
    assert "OSError" in (final.error or "") and "model.safetensors" in (final.error or "")
    assert reg.list_adapters(provenance="transferred") == []


def test_follow_runs_the_job_here_and_shows_its_stages(world) -> None:  # type: ignore[no-untyped-def]
    from api.cli_transfer import follow

    reg: Registry = world["registry"]
    job = submit_transfer(reg, world["source_id"], world["target"], config=FAST)
    final = follow(reg, job.id, quiet=True, poll=0.1)
    assert final.state == "succeeded" and final.stage == "register" and final.progress == 1.0


# -- REST ----------------------------------------------------------------------------------


def test_rest_transfer_returns_202_and_the_job(world) -> None:  # type: ignore[no-untyped-def]
    from litestar.testing import TestClient

    from api.app import create_app
    from registry.settings import ApiSettings

    reg: Registry = world["registry"]
    admin = reg.create_api_key("ops", "admin")[1]
    reader = reg.create_api_key("app", "reader")[1]
    h = {"Authorization": f"Bearer {admin}"}
    body = {"adapter_id": world["source_id"], "target_base_model": world["target"], "samples": 3}
    with TestClient(create_app(reg, ApiSettings())) as client:
        r = client.post("/v1/transfers", json=body, headers=h)
        assert r.status_code == 202, r.text
        job = r.json()
        assert (
            job["kind"] == "transfer" and job["state"] == "queued" and job["params"]["samples"] == 3
        )
        assert client.get(job["url"], headers=h).json()["id"] == job["id"]
        assert (
            client.post(
                "/v1/transfers", json=body, headers={"Authorization": f"Bearer {reader}"}
            ).status_code
            == 403
        )
        for bad, status in [
            ({**body, "adapter_id": 999_999}, 404),
            ({**body, "target_base_model": "no-such-model"}, 404),
            ({**body, "samples": 0}, 400),
            ({**body, "colour": "red"}, 400),
            ({**body, "config": {"distill_stpes": 3}}, 400),
            ({**body, "resources": {"num_gpus": -1}}, 400),
            ({"target_base_model": world["target"]}, 400),
        ]:
            got = client.post("/v1/transfers", json=bad, headers=h)
            assert got.status_code == status, (bad, got.text)
            assert set(got.json()) >= {"status_code", "detail"}
        schema = client.get("/schema/openapi.json").json()
        op = schema["paths"]["/v1/transfers"]["post"]
        assert "202" in op["responses"] and "404" in op["responses"]
        assert "gemma3-270m" in json.dumps(op["requestBody"])
    reg.cancel_job(job["id"])


# -- engines and real processes ----------------------------------------------------------------


def test_ray_engine_runs_each_job_as_a_ray_task(world) -> None:  # type: ignore[no-untyped-def]
    ray = pytest.importorskip("ray")
    from api.engines import RayEngine

    reg: Registry = world["registry"]
    job = submit_transfer(
        reg, world["source_id"], world["target"], config=FAST,
        resources={"num_cpus": 1, "num_gpus": 0},
    )  # fmt: skip
    greedy = submit_transfer(
        reg, world["source_id"], world["target"], config=FAST, resources={"num_gpus": 2}
    )
    try:
        engine = RayEngine(
            reg, init={"num_cpus": 2, "num_gpus": 0, "object_store_memory": 80 * 2**20}
        )
        engine.run(poll=0.5, once=True)
    finally:
        ray.shutdown()
    done = reg.get_job(job.id)
    assert done.state == "succeeded", done.error
    assert (done.worker or "").startswith("ray:") and "'CPU': 1.0" in done.log
    assert reg.get_adapter(done.result["adapter_id"]).base_model == world["target"]  # type: ignore[index]
    refused = reg.get_job(greedy.id)
    assert refused.state == "failed" and "the Ray cluster has 0" in (refused.error or "")


def test_killed_worker_resumes_the_transfer_with_one_result(
    tmp_path: Path, tiny_base: Path, tiny_gemma: Path, embedder
) -> None:  # type: ignore[no-untyped-def]
    w = transfer_world(tmp_path, tiny_base, tiny_gemma, embedder)
    reg: Registry = w["registry"]
    settings: Settings = w["settings"]
    env = os.environ | {
        "LORAMINT_HOME": str(settings.home),
        "LORAMINT_DATABASE_URL": settings.database_url,
        "LORAMINT_MODEL_CACHE": str(settings.model_cache),
        "LORAMINT_JOB_LEASE_S": "4",
    }
    # the CLI queues it; slow enough stages that the kill lands mid-job
    slow = {**FAST, "disc_steps": 24, "distill_steps": 12}
    cli = [sys.executable, "-m", "api.cli"]
    sets = [arg for k, v in slow.items() for arg in ("--set", f"{k}={v}")]
    queued = subprocess.run(
        [*cli, "transfer", str(w["source_id"]), "--to", w["target"], "--json", *sets],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert queued.returncode == 0, queued.stderr
    job_id = json.loads(queued.stdout)["job_id"]
    first = subprocess.Popen([*cli, "worker", "--poll", "0.2"], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: (
                reg.get_job(job_id).stage == "discriminator"
                and artifact_name("synthesize") in reg.get_job(job_id).artifacts
            ),
            240,
            "the synthesize stage to finish",
        )
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    killed = reg.get_job(job_id)
    assert killed.state == "running" and killed.attempts == 1
    assert killed.stage == "discriminator"
    assert reg.list_adapters(provenance="transferred") == []
    synthesized = reg.job_artifact(job_id, artifact_name("synthesize"))
    second = subprocess.Popen([*cli, "worker", "--poll", "0.2"], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: reg.get_job(job_id).state in ("succeeded", "failed"), 600, "the job to end"
        )
    finally:
        second.terminate()
        second.wait(timeout=60)
    final = reg.get_job(job_id)
    assert final.state == "succeeded", final.error
    assert final.attempts == 2 and "lost its lease" in final.log
    assert "synthesize: reused the output of an earlier attempt" in final.log
    assert reg.job_artifact(job_id, artifact_name("synthesize")) == synthesized
    moved = reg.list_adapters(provenance="transferred")
    assert [a.id for a in moved] == [final.result["adapter_id"]]  # type: ignore[index]
    reg.close()


BENCH = Path(__file__).resolve().parent.parent / "bench" / "transfer.py"


def bench_world(
    tmp_path: Path, tiny_base: Path, tiny_gemma: Path, embedder: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    """The tiny transfer world with a one-task default suite (held-out "cat"), closed so
    that bench/transfer.py can open it, and the environment that points there."""
    from generator.tasks.task import TaskSuite

    w = transfer_world(tmp_path, tiny_base, tiny_gemma, embedder)
    settings: Settings = w["settings"]
    TaskSuite(settings.tasks_dir / "default").write_all([tiny_task("cat", "cat", held_out=True)])
    w["registry"].close()
    env = os.environ | {
        "LORAMINT_HOME": str(settings.home),
        "LORAMINT_DATABASE_URL": settings.database_url,
        "LORAMINT_MODEL_CACHE": str(settings.model_cache),
    }
    return w, env


def test_bench_prints_the_table_on_tiny_models(
    tmp_path: Path, tiny_base: Path, tiny_gemma: Path, embedder
) -> None:  # type: ignore[no-untyped-def]
    """bench/transfer.py end to end: source, bare target, transferred and both ablations."""
    w, env = bench_world(tmp_path, tiny_base, tiny_gemma, embedder)
    settings: Settings = w["settings"]
    run = subprocess.run(
        [
            sys.executable, str(BENCH), "--source", w["base"], "--target", w["target"],
            "--samples", "3", "--steps", "3", "--disc-steps", "3", "--max-rounds", "1",
            "--min-kept", "0", "--eval-n", "6", "--min-gain", "0",  # the tiny zoo is not scored
        ],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout.splitlines()
    row = next(line for line in table if line.startswith("| cat |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 7 and all(0.0 <= float(c) <= 1.0 for c in cells[1:6]), row
    assert any(line.startswith("| cat |") and "synthesize" not in line for line in table[-3:])
    written = list(settings.results_dir.glob("transfer-*.json"))
    assert len(written) == 1
    [task] = json.loads(written[0].read_text())["tasks"]
    assert set(task["wall_seconds"]) == {"synthesize", "discriminator", "filter", "distill"}
    assert task["transferred_adapter_id"] and task["eval_n"] == 6

    # a second run reuses the job and the figures, and adds the balanced, soft and bound
    # columns; the row of a task it does not score (here: written by hand) stays. The
    # target model gets its own zoo adapter for the task: the "target oracle" bound
    other = {"task": "elsewhere", "adapter_id": 99, "eval_n": 6, "job_id": 99, "source": 0.5}
    payload = json.loads(written[0].read_text())
    write_atomic(written[0], json.dumps({**payload, "tasks": [task, other]}).encode())
    config = TrainConfig(rank=4, alpha=8, steps=3, batch_size=8, lr=1e-2, snapshots=1)
    cat = tiny_task("cat", "cat", held_out=True)
    [oracle] = build_zoo(
        w["registry"], [cat], base_model=w["target"], config=config, evaluate=False
    )
    w["registry"].close()
    again = subprocess.run(
        [*run.args, "--balanced", "--soft", "--hard", "--bounds"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"reusing transfer job {task['job_id']}" in again.stderr
    [second, kept] = json.loads(written[0].read_text())["tasks"]
    assert kept == other and "| elsewhere | 0.500 |" in again.stdout
    assert {k: second[k] for k in task} == task  # nothing measured twice
    assert 0.0 <= second["balanced"] <= 1.0 and 0.0 <= second["no_filter_balanced"] <= 1.0
    # the job has the default soft filter: --soft adds nothing, --hard the paper's filter
    assert 0.0 <= second["hard_filter"] <= 1.0 and "soft_filter" not in second
    assert 0.0 <= second["real_inputs"] <= 1.0 and 0.0 <= second["target_oracle"] <= 1.0
    assert second["target_oracle_id"] == oracle.adapter_id
    # a run without those flags keeps the columns the row has
    plain = subprocess.run(run.args, env=env, capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert json.loads(written[0].read_text())["tasks"][0] == second
    assert "| hard filter |" in plain.stdout
    header = next(line for line in again.stdout.splitlines() if line.startswith("| task |"))
    assert header.split("|")[-7:-1] == [
        " no filter, balanced ",
        " soft filter ",
        " hard filter ",
        " real inputs (bound) ",
        " target oracle (bound) ",
        " kept / generated ",
    ]

    # another setting is another job, named in the table's first line
    third = subprocess.run(
        [*run.args, "--set", "kd_temperature=2"], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert third.returncode == 0, third.stderr[-3000:]
    [row3, _] = json.loads(written[0].read_text())["tasks"]
    assert row3["job_id"] != task["job_id"] and "settings kd_temperature=2" in third.stdout
    assert w["registry"].get_job(row3["job_id"]).params["config"]["kd_temperature"] == 2

    # a job with the paper's hard filter: its transferred column is the kept inputs, so
    # --hard adds nothing and --soft adds every scored input, drawn by p(real)
    fourth = subprocess.run(
        [*run.args, "--set", "soft_filter=false", "--soft", "--hard"], env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    [row4, _] = json.loads(written[0].read_text())["tasks"]
    assert w["registry"].get_job(row4["job_id"]).params["config"]["soft_filter"] is False
    assert 0.0 <= row4["soft_filter"] <= 1.0 and "hard_filter" not in row4
    assert row4["scored"] >= 1 and "| soft filter |" in fourth.stdout


def test_bench_skips_adapters_that_do_nothing_on_their_own_model(
    tmp_path: Path, tiny_base: Path, tiny_gemma: Path, embedder
) -> None:  # type: ignore[no-untyped-def]
    """Without --names the bench transfers only adapters whose zoo gain reaches --min-gain;
    an unscored one (the tiny zoo's) does not, and the bench says so before loading models."""
    w, env = bench_world(tmp_path, tiny_base, tiny_gemma, embedder)
    settings: Settings = w["settings"]
    run = subprocess.run(
        [sys.executable, str(BENCH), "--source", w["base"], "--target", w["target"]],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0
    assert "skipped (source gain < 0.1): cat" in run.stderr
    assert "source gain >= 0.1" in run.stderr
    assert not list(settings.results_dir.glob("transfer-*"))
    assert w["registry"].list_jobs(kind="transfer", limit=10) == []

    bad = subprocess.run(
        [*run.args, "--min-gain", "0", "--set", "kd_temprature=2"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown transfer settings kd_temprature" in bad.stderr
    assert w["registry"].list_jobs(kind="transfer", limit=10) == []
