"""Several adapters trained in the same passes (``train_stacked``) come out as each
would alone from ``train_lora``, up to float rounding, and leave the model as it was."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from generator.tasks.evaluation import load_base
from generator.tasks.prompting import PromptFormat
from generator.tasks.task import Example
from generator.zoo.stacked import train_stacked
from generator.zoo.trainer import TrainConfig, train_lora
from registry.errors import InvalidInput

CONFIG = TrainConfig(rank=4, alpha=8, steps=8, batch_size=4, lr=1e-2, warmup_steps=2, snapshots=3)


def task(word: str, n: int, seed: int) -> tuple[str, list[Example]]:
    rng = random.Random(seed)
    words = ["dog", "bird", "tree", "car", "sun", "cat", "fish"]
    out = []
    for _ in range(n):
        ws = rng.sample(words, rng.randint(2, 4))  # rows of different lengths
        out.append(Example(" ".join(ws), "yes" if word in ws else "no"))
    return f"Does the text mention a {word}? Answer yes or no.", out


@pytest.fixture(scope="module")
def base(tiny_base: Path) -> tuple[torch.nn.Module, PromptFormat]:
    model, tok = load_base(tiny_base)
    return model, PromptFormat.for_tokenizer(tok)


def test_stacked_adapters_match_each_trained_alone(
    base: tuple[torch.nn.Module, PromptFormat],
) -> None:
    model, fmt = base
    # a task with fewer examples than a batch, and tasks whose batches run out at
    # different steps: each draws its own batches as train_lora would
    tasks = [task("cat", 10, 0), task("fish", 3, 1), task("car", 7, 2)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stacked = train_stacked(model, fmt, tasks, CONFIG)
    assert [type(m).__name__ for m in model.modules()].count("RowLora") == 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not model.training
    for (description, examples), got in zip(tasks, stacked, strict=True):
        alone = train_lora(model, fmt, description, examples, CONFIG)
        assert got.peft_config == alone.peft_config and got.tokens == alone.tokens
        assert got.losses == pytest.approx(alone.losses, rel=1e-4, abs=1e-5)
        assert len(got.snapshots) == len(alone.snapshots) == CONFIG.snapshots
        pairs = [(got.weights, alone.weights), (got.mean, alone.mean), (got.var, alone.var)]
        pairs += list(zip(got.snapshots, alone.snapshots, strict=True))
        for mine, theirs in pairs:
            assert sorted(mine) == sorted(theirs)
            for name, tensor in theirs.items():
                assert mine[name].device.type == "cpu"
                torch.testing.assert_close(mine[name], tensor, atol=1e-4, rtol=1e-3)
        # training moved every adapter away from its start, each its own way
        assert any(t.abs().max() > 0 for n, t in got.weights.items() if "lora_B" in n)
    b = [r.weights for r in stacked]
    assert not all(torch.equal(b[0][n], b[1][n]) for n in b[0] if "lora_B" in n)


def test_nothing_to_train_is_refused(base: tuple[torch.nn.Module, PromptFormat]) -> None:
    model, fmt = base
    with pytest.raises(InvalidInput, match="no tasks"):
        train_stacked(model, fmt, [], CONFIG)
    with pytest.raises(InvalidInput, match="has no training examples"):
        train_stacked(model, fmt, [task("cat", 4, 0), ("Empty task.", [])], CONFIG)
    assert [type(m).__name__ for m in model.modules()].count("RowLora") == 0
