"""Trans-LoRA (arXiv 2405.17258): move a LoRA to another base model with only
its few seed examples. This module samples the synthetic inputs; the pipeline's
data stages are pure functions of models and texts (no database;
``generator.transfer.job`` runs them as a job):

1. ``synthesize``: the target model continues a few-shot list of the seed
   inputs ("1. ... 5. 6."), sampled in batches; empty outputs, copies of a
   seed and duplicates are dropped.
2. ``train_discriminator`` (``generator.transfer.discriminator``): a LoRA on
   the source model answers "yes" for a real input (the seeds) and "no" for the
   source model's own synthetic inputs. It is trained once per adapter (the job
   reuses it across targets).
3. ``rejection_sample``: a synthetic input is kept only when the discriminator
   gives p(yes) > p(no) (rank classification of the two answers); the target
   model samples more until ``samples`` are kept or the round budget is spent.
4. Distillation of the target LoRA against the source model + source LoRA
   lives in ``generator.transfer.distill``. By default it departs from the paper in two
   ways (``soft_filter``, ``balance_labels``): it draws every input the filter
   scored with probability p(real) instead of keeping only p(real) > 1/2, and
   weighs the inputs so that the teacher's labels count alike;
   ``docs/experiments.md`` measures both against the paper's method.

Seeds and synthetic inputs keep their line breaks (a news item is a headline
and a lead on two lines): the source adapter learned its task on the inputs as
they are, and a flattened input is another input to it (bbc_tech's adapter
scores 0.71 on its test articles and 0.56 on the same articles on one line, so
a student distilled on flattened inputs learns the weaker teacher). In a
generation prompt every input stays on one numbered line, its line breaks
shown as a literal ``\\n`` (``LINE_BREAK``), which the models copy; their
continuations end at the first real line break and have the marker decoded
back. Seeds and synthetic inputs alike are cut to ``max_input_chars``.
"""

from __future__ import annotations

import functools
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from generator.tasks.device import model_device
from generator.transfer.config import TransferConfig
from registry.errors import InvalidInput

LINE_BREAK = " \\n "  # how a generation prompt shows a line break inside one input
_SHOWN_BREAK = re.compile(r"[ \t]*\\n[ \t]*")  # the marker, as a continuation writes it
_ENUMERATION = re.compile(r"^\s*\d+\s*[.)]\s*")


def clean_input(text: str, max_chars: int) -> str:
    """``text`` with single spaces inside each line, no empty lines, cut to ``max_chars``
    (line breaks kept: they are part of what the source adapter learned to read)."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)[:max_chars].strip()


def shown_input(text: str) -> str:
    """An input as a generation prompt lists it: one line, its breaks as ``LINE_BREAK``."""
    return LINE_BREAK.join(text.splitlines())


def unshown_input(text: str) -> str:
    """A continuation's ``LINE_BREAK`` markers back to line breaks."""
    return _SHOWN_BREAK.sub("\n", text)


def dedupe_key(text: str) -> str:
    return " ".join(text.lower().split())


# -- 1. synthetic inputs --------------------------------------------------------


def fewshot_prompt(description: str, inputs: Sequence[str]) -> str:
    """The paper's generation prompt: a numbered list of real inputs, open at the next number."""
    lines = [f"Task: {description}", f"Here are {len(inputs) + 1} example inputs for this task:"]
    lines += [f"{i}. {shown_input(text)}" for i, text in enumerate(inputs, 1)]
    return "\n".join(lines) + f"\n{len(inputs) + 1}."


@functools.lru_cache(maxsize=8)
def line_end_ids(tokenizer: Any) -> list[int]:
    """Ids of the tokens that contain a line break, and the end-of-sequence token.

    (transformers' ``stop_strings`` needs tokenizers it can take apart; decoding
    each vocabulary entry once works for all.)"""
    vocab = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab)])
    ids = [i for i, text in enumerate(texts) if "\n" in text]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


@torch.no_grad()
def sample_completions(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    config: TransferConfig,
    seed: int,
) -> list[str]:
    """One sampled continuation per prompt, up to its first line break (batched, left padded)."""
    pad = tokenizer.pad_token_id
    pad = pad if pad is not None else (tokenizer.eos_token_id or 0)
    encoded = [list(tokenizer(p)["input_ids"]) for p in prompts]
    B, T = len(encoded), max(len(e) for e in encoded)
    ids = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, e in enumerate(encoded):  # left padding: every prompt ends at column T-1
        ids[b, T - len(e) :] = torch.tensor(e)
        mask[b, T - len(e) :] = 1
    torch.manual_seed(seed)
    device = model_device(model)
    out = model.generate(  # type: ignore[operator]
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        do_sample=True,
        temperature=float(config.temperature),
        top_p=float(config.top_p),
        top_k=0,  # nucleus sampling alone (some models default top_k)
        max_new_tokens=config.max_new_tokens,
        eos_token_id=line_end_ids(tokenizer),  # a row stops at its first line break
        pad_token_id=pad,
    )  # (B, T + new)
    texts = tokenizer.batch_decode(out[:, T:].cpu(), skip_special_tokens=True)
    return [str(t).split("\n", 1)[0] for t in texts]


@dataclass
class Synthesis:
    """Unique synthetic inputs, with what was dropped on the way to them."""

    inputs: list[str] = field(default_factory=list)
    generated: int = 0  # completions sampled
    empty: int = 0
    seed_copies: int = 0
    duplicates: int = 0
    batches: int = 0
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "generated": self.generated,
            "unique": len(self.inputs),
            "empty": self.empty,
            "seed_copies": self.seed_copies,
            "duplicates": self.duplicates,
            "batches": self.batches,
            "seconds": round(self.seconds, 2),
        }


class Synthesizer:
    """Samples synthetic inputs from one model, remembering everything it has
    seen (the seeds included), so every batch it returns is new and unique."""

    def __init__(
        self,
        sample: Callable[[list[str], int], list[str]],
        description: str,
        seeds: Sequence[str],
        config: TransferConfig,
        *,
        seed: int,
    ) -> None:
        self.sample = sample  # (prompts, seed) -> one completion per prompt
        self.description = description
        self.config = config
        self.seeds = [clean_input(s, config.max_input_chars) for s in seeds]
        self.seeds = [s for s in self.seeds if s]
        if not self.seeds:
            raise InvalidInput("synthetic inputs need at least one non-empty seed input")
        self.seed_keys = {dedupe_key(s) for s in self.seeds}
        self.seen: set[str] = set()
        self.rng = random.Random(seed)
        self.base_seed = seed
        self.batches = 0

    def exclude(self, texts: Sequence[str]) -> None:
        """Never return these (inputs a resumed stage already has)."""
        self.seen.update(dedupe_key(t) for t in texts)

    def batch(self, stats: Synthesis) -> list[str]:
        """One generation batch: ``gen_batch`` prompts, each with the seeds in a new order."""
        k = min(self.config.few_shot, len(self.seeds))
        prompts = [
            fewshot_prompt(self.description, self.rng.sample(self.seeds, k))
            for _ in range(self.config.gen_batch)
        ]
        t0 = time.perf_counter()
        raw = self.sample(prompts, self.base_seed * 100_003 + self.batches)
        self.batches += 1
        stats.batches += 1
        stats.generated += len(raw)
        new: list[str] = []
        for text in raw:
            text = _ENUMERATION.sub("", text, count=1)
            text = clean_input(unshown_input(text), self.config.max_input_chars)
            key = dedupe_key(text)
            if not text:
                stats.empty += 1
            elif key in self.seed_keys:
                stats.seed_copies += 1
            elif key in self.seen:
                stats.duplicates += 1
            else:
                self.seen.add(key)
                new.append(text)
        stats.inputs += new
        stats.seconds += time.perf_counter() - t0
        return new


def synthesize(
    synth: Synthesizer,
    count: int,
    *,
    max_batches: int,
    on_batch: Callable[[Synthesis], None] | None = None,
) -> Synthesis:
    """Sample batches until ``count`` unique inputs (or ``max_batches`` batches)."""
    stats = Synthesis()
    while len(stats.inputs) < count and stats.batches < max_batches:
        synth.batch(stats)
        if on_batch:
            on_batch(stats)
    stats.inputs = stats.inputs[:count]
    return stats


def model_sampler(
    model: torch.nn.Module, tokenizer: Any, config: TransferConfig
) -> Callable[[list[str], int], list[str]]:
    return lambda prompts, seed: sample_completions(model, tokenizer, prompts, config, seed)


# -- 3. rejection sampling --------------------------------------------------------
