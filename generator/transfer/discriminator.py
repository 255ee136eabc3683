"""Trans-LoRA's filter (arXiv 2405.17258, steps 2 and 3): a discriminator LoRA on the
source model answers "yes" for a real input (the seeds) and "no" for the source
model's own synthetic inputs; a synthetic input is kept only when it gives
p(yes) > p(no), and the target model samples more until enough are kept or
the round budget is spent."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from generator.tasks.evaluation import Evaluator
from generator.tasks.prompting import PromptFormat
from generator.tasks.scoring import label_logprobs
from generator.tasks.task import Example
from generator.transfer.config import TransferConfig
from generator.transfer.synthesis import Synthesis
from generator.zoo.trainer import TrainConfig, train_lora
from registry.errors import InvalidInput
from registry.lora_spec import Tensors

YES, NO = "yes", "no"


def discriminator_description(description: str) -> str:
    return (
        f"Task: {description}\n"
        "Is the text below a real input for this task (not a made-up one)? Answer yes or no."
    )


@dataclass(frozen=True)
class Discriminator:
    peft_config: dict[str, Any]
    weights: Tensors
    losses: list[float]
    real: int  # seed inputs it learned as "yes"
    synthetic: int  # source-model synthetic inputs it learned as "no"
    seconds: float

    def figures(self) -> dict[str, Any]:
        k = max(1, min(5, len(self.losses) // 4))  # mean of the first / last k steps
        head, tail = self.losses[:k], self.losses[-k:]
        return {
            "real": self.real,
            "synthetic": self.synthetic,
            "steps": len(self.losses),
            "loss_first": round(sum(head) / len(head), 4),
            "loss_last": round(sum(tail) / len(tail), 4),
            "seconds": round(self.seconds, 2),
        }


def real_variants(real: Sequence[str], count: int) -> list[str]:
    """``count`` real inputs: each seed whole, then (cycling) cut after 3/4, 1/2, 1/4 of
    its words (at least three; line breaks kept), as a synthetic input is often shorter
    than a real one."""
    out: list[str] = []
    fractions = (1.0, 0.75, 0.5, 0.25)
    for i in range(count):
        text = real[i % len(real)]
        ends = [m.end() for m in re.finditer(r"\S+", text)]
        keep = max(3, math.ceil(len(ends) * fractions[(i // len(real)) % len(fractions)]))
        out.append(text[: ends[min(keep, len(ends)) - 1]] if ends else text)
    return out


def train_discriminator(
    model: torch.nn.Module,
    fmt: PromptFormat,
    description: str,
    real: Sequence[str],
    synthetic: Sequence[str],
    config: TransferConfig,
    target_modules: Sequence[str],
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> Discriminator:
    """A LoRA on the source model: real inputs -> "yes", synthetic ones -> "no".

    The few real inputs are repeated to balance the classes, every batch mixes
    both, and the repeats are cut at varied lengths (``real_variants``) so that
    length alone does not tell the classes apart."""
    if not real or not synthetic:
        raise InvalidInput(
            f"the discriminator needs real and synthetic inputs, got {len(real)} and "
            f"{len(synthetic)}"
        )
    examples = [Example(x, YES) for x in real_variants(real, max(len(real), len(synthetic)))]
    examples += [Example(x, NO) for x in synthetic]
    train = TrainConfig(
        rank=config.disc_rank,
        alpha=2.0 * config.disc_rank,
        target_modules=tuple(target_modules),
        steps=config.disc_steps,
        batch_size=min(16, len(examples)),
        lr=config.disc_lr,
        warmup_steps=min(4, config.disc_steps // 4),
        seed=config.seed,
        init_seed=config.seed,
        snapshots=1,
        length_buckets=False,
    )
    result = train_lora(
        model, fmt, discriminator_description(description), examples, train, on_step=on_step
    )
    return Discriminator(
        peft_config=result.peft_config,
        weights=result.weights,
        losses=result.losses,
        real=len(real),
        synthetic=len(synthetic),
        seconds=result.seconds,
    )


def margins(
    evaluator: Evaluator, disc: Discriminator, description: str, texts: Sequence[str]
) -> torch.Tensor:
    """(N,) the discriminator's log p(yes) - log p(no) for each text."""
    if not texts:
        return torch.zeros(0)
    fmt = evaluator.format
    prompts = [fmt.prompt_ids(discriminator_description(description), t) for t in texts]
    labels = [fmt.answer_ids(YES), fmt.answer_ids(NO)]
    with evaluator.attached(disc.peft_config, disc.weights) as model:
        scores = label_logprobs(
            model, prompts, labels, pad_id=evaluator.pad_id, batch_size=evaluator.batch_size
        )  # (N, 2)
    return scores[:, 0] - scores[:, 1]


def realness(
    evaluator: Evaluator, disc: Discriminator, description: str, texts: Sequence[str]
) -> list[float]:
    """For each text: the discriminator's p(yes) / (p(yes) + p(no)), its p(real)."""
    return torch.sigmoid(margins(evaluator, disc, description, texts)).tolist()


@dataclass
class Filtered:
    kept: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    rounds: int = 0  # generation batches added after the first pool
    extra: Synthesis = field(default_factory=Synthesis)  # what those batches produced
    surplus: int = 0  # accepted beyond ``wanted`` in the last batch (not used)
    seconds: float = 0.0

    def figures(self, wanted: int) -> dict[str, Any]:
        scored = len(self.kept) + self.surplus + len(self.rejected)
        return {
            "scored": scored,
            "kept": len(self.kept),
            "surplus": self.surplus,
            "rejected": len(self.rejected),
            "acceptance": round((len(self.kept) + self.surplus) / scored, 4) if scored else None,
            "rounds": self.rounds,
            "extra_generated": self.extra.generated,
            "shortfall": max(0, wanted - len(self.kept)),
            "seconds": round(self.seconds, 2),
        }


def rejection_sample(
    pool: Sequence[str],
    accept: Callable[[list[str]], list[bool]],
    more: Callable[[Synthesis], list[str]],
    *,
    wanted: int,
    max_rounds: int,
) -> Filtered:
    """Keep the pool's accepted inputs; while fewer than ``wanted`` are kept, judge new
    batches from ``more`` (at most ``max_rounds``). Returns at most ``wanted`` kept."""
    t0 = time.perf_counter()
    out = Filtered()
    todo = list(pool)
    while True:
        verdicts = accept(todo) if todo else []
        if len(verdicts) != len(todo):
            raise ValueError(f"accept() judged {len(verdicts)} of {len(todo)} inputs")
        for text, ok in zip(todo, verdicts, strict=True):
            (out.kept if ok else out.rejected).append(text)
        if len(out.kept) >= wanted or out.rounds >= max_rounds:
            break
        out.rounds += 1
        todo = more(out.extra)
    out.surplus = max(0, len(out.kept) - wanted)
    out.kept = out.kept[:wanted]
    out.seconds = time.perf_counter() - t0
    return out
