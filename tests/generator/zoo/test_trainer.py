"""The LoRA trainer on a tiny random Llama with a character tokenizer."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from generator.tasks.evaluation import load_base
from generator.tasks.prompting import PromptFormat
from generator.tasks.task import Example
from generator.zoo.trainer import (
    TrainConfig,
    attach_lora,
    batches,
    collate,
    encode,
    forward_with_prefix,
    lora_state,
    split_prefix,
    train_lora,
    train_multitask,
)
from registry.errors import InvalidInput

DESCRIPTION = "Does the text mention a cat? Answer yes or no."


def examples(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    words = ["dog", "bird", "tree", "car", "sun", "cat"]
    out = []
    for _ in range(n):
        ws = rng.sample(words, 3)
        out.append(Example(" ".join(ws), "yes" if "cat" in ws else "no"))
    return out


Base = tuple[torch.nn.Module, PromptFormat]  # the tiny model and its prompt format


@pytest.fixture(scope="module")
def base(tiny_base: Path) -> Base:
    model, tok = load_base(tiny_base)
    return model, PromptFormat.for_tokenizer(tok)


def test_prompt_format_follows_the_chat_template(base: Base) -> None:
    _, fmt = base
    assert fmt.chat
    assert (
        fmt.prompt_text("Do X.", "input")
        == "<|im_start|>user\nDo X.\n\ninput<|im_end|>\n<|im_start|>assistant\n"
    )
    assert fmt.answer_ids("no")[-1] == fmt.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_every_adapter_starts_from_the_same_a(base: Base) -> None:
    model, _ = base
    cfg = TrainConfig(rank=4, alpha=8, steps=1)
    torch.manual_seed(123)  # the caller's RNG state must not matter
    first = lora_state(p := attach_lora(model, cfg))
    p.unload()
    torch.manual_seed(456)
    second = lora_state(p := attach_lora(model, cfg))
    p.unload()
    assert first.keys() == second.keys()
    for k in first:
        assert torch.equal(first[k], second[k])
        if "lora_B" in k:
            assert not first[k].any()
    other = lora_state(p := attach_lora(model, TrainConfig(rank=4, alpha=8, steps=1, init_seed=1)))
    p.unload()
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_A" in k)


def test_answer_only_logits_give_the_full_sequence_loss(base: Base) -> None:
    model, fmt = base
    data = encode(fmt, DESCRIPTION, examples(6), 320)
    data[0] = type(data[0])(data[0].prompt, fmt.answer_ids("maybe"))  # answers of unequal length
    ids, mask, pos, targets, tgt_mask = collate(data, fmt.tokenizer.pad_token_id)
    K = targets.shape[1] + 1
    with torch.no_grad():
        fast = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=K).logits[
            :, :-1
        ]
        fast_loss = F.cross_entropy(fast[tgt_mask], targets[tgt_mask], reduction="sum")
        slow_loss = torch.tensor(0.0)
        for x in data:  # one unpadded sequence at a time, full logits
            seq = torch.tensor([x.prompt + x.answer])
            logits = model(input_ids=seq).logits[0]
            n = len(x.answer)
            slow_loss += F.cross_entropy(logits[-n - 1 : -1], seq[0, -n:], reduction="sum")
    assert torch.allclose(fast_loss, slow_loss, rtol=1e-4)


def test_shared_prefix_runs_once_with_the_same_loss_and_gradients(base: Base) -> None:
    model, fmt = base
    data = encode(fmt, DESCRIPTION, examples(8), 320)
    prefix, rest = split_prefix(data)
    assert len(prefix) > 20 and all(
        d.prompt == prefix + r.prompt for d, r in zip(data, rest, strict=True)
    )
    peft_model = attach_lora(model, TrainConfig(rank=4, alpha=8, steps=1, init_seed=3))
    torch.manual_seed(0)
    for p in peft_model.parameters():  # non-zero B, so gradients reach A too
        if p.requires_grad:
            p.data.normal_(0, 0.1)
    grads, losses = [], []
    for pre, batch in (([], data), (prefix, rest)):
        ids, mask, pos, targets, tgt_mask = collate(batch, fmt.tokenizer.pad_token_id)
        logits = forward_with_prefix(peft_model, pre, ids, mask, pos, targets.shape[1] + 1)[:, :-1]
        loss = F.cross_entropy(logits[tgt_mask], targets[tgt_mask])
        peft_model.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        losses.append(loss.item())
        grads.append(
            {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
        )
    peft_model.unload()
    assert abs(losses[0] - losses[1]) < 1e-5
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


def test_bucketing_covers_every_example_once() -> None:
    from generator.zoo.trainer import Encoded

    items = [Encoded([1] * n, [2]) for n in range(1, 41)]
    bs = batches(items, 8, random.Random(0))
    assert sorted(len(x) for b in bs for x in b) == sorted(len(x) for x in items)
    spread = [max(len(x) for x in b) - min(len(x) for x in b) for b in bs]
    assert max(spread) < 10  # sorted windows: similar lengths share a batch


def test_training_learns_is_deterministic_and_keeps_the_trajectory(base: Base) -> None:
    model, fmt = base
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(rank=4, alpha=8, steps=30, batch_size=8, lr=3e-2, snapshots=3)
    steps: list[int] = []
    a = train_lora(
        model, fmt, DESCRIPTION, examples(64), cfg, on_step=lambda s, _loss: steps.append(s)
    )
    assert steps == list(range(30))
    assert sum(a.losses[-5:]) / 5 < 0.6 * sum(a.losses[:5]) / 5
    b = train_lora(model, fmt, DESCRIPTION, examples(64), cfg)
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    # the base model is untouched and carries no LoRA afterwards
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any("lora" in n for n, _ in model.named_modules())
    # late-trajectory statistics: 3 snapshots, the last is the final weights
    assert len(a.snapshots) == 3 and all(
        torch.equal(a.snapshots[-1][k], a.weights[k]) for k in a.weights
    )
    assert a.mean.keys() == a.weights.keys() == a.var.keys()
    assert all((v >= 0).all() for v in a.var.values())
    assert a.tokens > 0 and a.tokens_per_second > 0
    assert sorted(a.peft_config["target_modules"]) == ["q_proj", "v_proj"]


def test_one_lora_learns_several_tasks_from_their_descriptions(base: Base) -> None:
    model, fmt = base
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dog = [Example(e.input, "yes" if "dog" in e.input.split() else "no") for e in examples(64, 1)]
    tasks = [(DESCRIPTION, examples(64)), ("Does the text mention a dog?", dog), ("Empty.", [])]
    cfg = TrainConfig(rank=4, alpha=8, steps=24, batch_size=8, lr=3e-2, snapshots=2)
    a = train_multitask(model, fmt, tasks, cfg)
    assert len(a.losses) == 24 and sum(a.losses[-6:]) < 0.7 * sum(a.losses[:6])
    b = train_multitask(model, fmt, tasks, cfg)
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the second task's batches changed what was learnt
    one = train_multitask(model, fmt, tasks[:1], cfg)
    assert not all(torch.equal(one.weights[k], a.weights[k]) for k in a.weights)
    with pytest.raises(InvalidInput, match="no training examples"):
        train_multitask(model, fmt, [("Empty.", [])], cfg)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank": 0}, "rank"),
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"trajectory_start": 1.0}, "trajectory_start"),
        ({"target_modules": ()}, "target_modules"),
    ],
)
def test_bad_config(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(
    "bad",
    [{"steps": 10**12}, {"steps": 0}, {"rank": 0}, {"batch_size": 10**6}, {"lr": float("nan")}],
)
def test_train_config_bounds_every_parameter(bad: dict[str, Any]) -> None:
    """A zoo build job's parameters are bounded like every other job's: 10**12 steps is
    refused when the job is read, not trained for a geological age."""
    with pytest.raises(InvalidInput, match=next(iter(bad))):
        TrainConfig(**bad)
