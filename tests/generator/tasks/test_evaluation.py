"""Rank-classification scoring against a naive one-sequence-at-a-time reference."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from generator.tasks.evaluation import Evaluator, load_base
from generator.tasks.scoring import label_logprobs
from generator.tasks.task import Example, Task
from generator.zoo.trainer import TrainConfig, train_lora
from registry.errors import InvalidInput


@pytest.fixture(scope="module")
def evaluator(tiny_base: Path) -> Evaluator:
    model, tok = load_base(tiny_base)
    return Evaluator(model, tok, batch_size=3)


def naive(
    model: torch.nn.Module, prompts: list[list[int]], labels: list[list[int]]
) -> torch.Tensor:
    out = torch.zeros(len(prompts), len(labels))
    with torch.no_grad():
        for i, p in enumerate(prompts):
            for j, lab in enumerate(labels):
                logp = torch.log_softmax(model(torch.tensor([p + lab])).logits[0], -1)
                out[i, j] = sum(logp[len(p) - 1 + t, tok] for t, tok in enumerate(lab))
    return out


@pytest.mark.parametrize(
    "labels",
    [[[5], [6]], [[5, 9], [6]], [[7, 8, 9], [10, 11], [12]]],
    ids=["single-token", "mixed", "three-labels"],
)
def test_cached_scoring_equals_naive(evaluator: Evaluator, labels: list[list[int]]) -> None:
    g = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(4, 100, (int(n),), generator=g).tolist()
        for n in torch.randint(3, 30, (7,), generator=g)
    ]
    got = label_logprobs(evaluator.model, prompts, labels, pad_id=0, batch_size=3)
    assert torch.allclose(got, naive(evaluator.model, prompts, labels), atol=1e-4)


def _task(outputs: list[str]) -> Task:
    train = tuple(Example(f"item {i}", "yes") for i in range(32))
    test = tuple(Example(f"case {i}", o) for i, o in enumerate(outputs))
    return Task("always-yes", "Answer yes.", "test", ("yes", "no"), train, test, "synthetic", "CC0")


def test_accuracy_bare_and_with_adapter(evaluator: Evaluator) -> None:
    task = _task(["yes"] * 10)
    bare = evaluator.accuracy(task)
    assert bare.n == 10 and len(bare.predictions) == 10
    assert bare.accuracy == sum(p == "yes" for p in bare.predictions) / 10
    result = train_lora(
        evaluator.model,
        evaluator.format,
        task.description,
        task.train,
        TrainConfig(rank=4, alpha=8, steps=20, batch_size=8, lr=3e-2),
    )
    tuned = evaluator.accuracy(task, (result.peft_config, result.weights))
    assert tuned.accuracy == 1.0  # a LoRA trained to say "yes" says yes
    assert not any(
        "lora" in n for n, _ in evaluator.model.named_modules()
    )  # detached after scoring
    flipped = evaluator.accuracy(_task(["no"] * 10), (result.peft_config, result.weights))
    assert flipped.accuracy == 0.0
    # a registered adapter's config names its base by registry name, not by the folder
    # the model in hand came from: scoring it says nothing about that (PEFT would warn)
    named = {**result.peft_config, "base_model_name_or_path": "another-name"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert evaluator.accuracy(task, (named, result.weights)).accuracy == 1.0
    assert not [w for w in caught if "base_model_name_or_path" in str(w.message)]


def test_free_form_tasks_are_refused(evaluator: Evaluator) -> None:
    task = Task("gen", "Write.", "f", (), (Example("a", "b"),), (Example("c", "d"),), "s", "l")
    with pytest.raises(InvalidInput, match="no label set"):
        evaluator.accuracy(task)
