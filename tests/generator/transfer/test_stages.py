"""Trans-LoRA's stages on tiny random models of two architectures: a Llama with a
chat-template character tokenizer (the source, with a tiny zoo adapter and its
seeds) and a Gemma3 with another vocabulary, width and depth and no chat template
(the target): settings, synthesis, the discriminator filter, distillation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

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
from generator.transfer.distill import teacher_label_probs
from generator.transfer.source import (
    source_task,
    student_config,
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
from registry.errors import InvalidInput
from tests.worlds import FAST, TransferWorld


@pytest.fixture(scope="module")
def models(tiny_base: Path, tiny_gemma: Path) -> dict[str, Evaluator]:
    return {"source": Evaluator.from_path(tiny_base), "target": Evaluator.from_path(tiny_gemma)}


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


def test_target_samples_one_line_each_reproducibly(models: dict[str, Evaluator]) -> None:
    target = models["target"]
    cfg = TransferConfig(max_new_tokens=16)
    prompts = [fewshot_prompt("Mentions a cat?", ["cat dog sun", "moon fish tree"])] * 3
    first = sample_completions(target.model, target.tokenizer, prompts, cfg, seed=5)
    again = sample_completions(target.model, target.tokenizer, prompts, cfg, seed=5)
    assert len(first) == 3 and first == again
    assert all("\n" not in t for t in first)
    assert len(set(first)) > 1  # sampled, not greedy


def test_discriminator_learns_real_from_source_synthetic(
    transfer: TransferWorld, models: dict[str, Evaluator]
) -> None:
    source = models["source"]
    cfg = TransferConfig(**{**FAST, "disc_steps": 40, "disc_negatives": 8})
    task = source_task(transfer.registry, transfer.source_id)
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


def test_distillation_moves_the_target_towards_the_teacher(
    transfer: TransferWorld, models: dict[str, Evaluator]
) -> None:
    from generator.transfer.distill import distill_labels

    source, target = models["source"], models["target"]
    task = source_task(transfer.registry, transfer.source_id)
    inputs = [e.input for e in transfer.task.train[:12]]
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


def test_free_form_tasks_distil_the_teachers_answers(
    transfer: TransferWorld, models: dict[str, Evaluator]
) -> None:
    from generator.transfer.distill import distill_answers, teacher_answers

    source, target = models["source"], models["target"]
    task = source_task(transfer.registry, transfer.source_id)
    inputs = ["cat dog sun", "moon fish tree", "car bird dog"]
    answers = teacher_answers(source, task.adapter, task.description, inputs, max_new_tokens=5)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    cfg = TransferConfig(**FAST)
    train = student_config(task.record, cfg, ("q_proj", "v_proj"))
    answers = [a or "yes" for a in answers]  # a random teacher may say nothing
    out = distill_answers(target.model, target.format, task.description, inputs, answers, train)
    assert out.mode == "answers" and out.examples == 3 and len(out.losses) == cfg.distill_steps


def test_a_transfer_runs_its_models_on_a_gpu(
    transfer: TransferWorld, tiny_base: Path, tiny_gemma: Path
) -> None:
    """With both base models on a GPU (a worker's ``LORAMINT_DEVICE``): sampling, the
    teacher's answers and label distillation run there and hand back text and CPU
    tensors; distillation's losses match the CPU's within float rounding. Without a GPU
    the second set of models is on the CPU again, which keeps this test's own code
    exercised."""
    from generator.transfer.distill import distill_labels, teacher_answers

    cpu = {"source": Evaluator.from_path(tiny_base), "target": Evaluator.from_path(tiny_gemma)}
    other = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = {
        "source": Evaluator.from_path(tiny_base, device=other),
        "target": Evaluator.from_path(tiny_gemma, device=other),
    }
    task = source_task(transfer.registry, transfer.source_id)
    inputs = [e.input for e in transfer.task.train[:12]]
    prompts = [fewshot_prompt("Mentions a cat?", ["cat dog sun", "moon fish tree"])] * 3
    target = gpu["target"]
    texts = sample_completions(target.model, target.tokenizer, prompts, TransferConfig(), seed=5)
    assert len(texts) == 3 and all(isinstance(t, str) and "\n" not in t for t in texts)
    answers = teacher_answers(gpu["source"], task.adapter, task.description, inputs[:3],
                              max_new_tokens=5)  # fmt: skip
    assert answers == teacher_answers(
        cpu["source"], task.adapter, task.description, inputs[:3], max_new_tokens=5
    )
    teacher = teacher_label_probs(cpu["source"], task.adapter, task.description, inputs,
                                  task.labels)  # fmt: skip
    train = student_config(task.record, TransferConfig(**FAST), ("q_proj", "v_proj"))
    runs = {
        name: distill_labels(
            m["target"].model,
            m["target"].format,
            task.description,
            inputs,
            task.labels,
            teacher,
            train,
            weights=torch.linspace(0.5, 2.0, 12),
        )  # fmt: skip
        for name, m in (("cpu", cpu), ("gpu", gpu))
    }
    assert {t.device.type for t in runs["gpu"].weights.values()} == {"cpu"}
    assert runs["gpu"].losses == pytest.approx(runs["cpu"].losses, rel=1e-3, abs=1e-5)
