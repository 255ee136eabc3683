"""Trans-LoRA (arXiv 2405.17258): move a LoRA to another base model with only
its few seed examples. The pipeline's data stages, as pure functions of models
and texts (no database; ``generator.transfer_job`` runs them as a job):

1. ``synthesize``: the target model continues a few-shot list of the seed
   inputs ("1. ... 5. 6."), sampled in batches; empty outputs, copies of a
   seed and duplicates are dropped.
2. ``train_discriminator``: a LoRA on the source model answers "yes" for a
   real input (the seeds) and "no" for the source model's own synthetic
   inputs. It is trained once per adapter (the job reuses it across targets).
3. ``rejection_sample``: a synthetic input is kept only when the discriminator
   gives p(yes) > p(no) (rank classification of the two answers); the target
   model samples more until ``samples`` are kept or the round budget is spent.
4. Distillation of the target LoRA against the source model + source LoRA
   lives in ``generator.distill``. By default it departs from the paper in two
   ways (``soft_filter``, ``balance_labels``): it draws every input the filter
   scored with probability p(real) instead of keeping only p(real) > 1/2, and
   weighs the inputs so that the teacher's labels count alike; README
   "Transfer results" measures both against the paper's method.

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

import dataclasses
import functools
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from generator.evaluation import Evaluator
from generator.lora_trainer import Tensors, TrainConfig, train_lora
from generator.prompting import PromptFormat
from generator.scoring import label_logprobs
from generator.tasks import Example
from registry.errors import InvalidInput

YES, NO = "yes", "no"
LINE_BREAK = " \\n "  # how a generation prompt shows a line break inside one input
_SHOWN_BREAK = re.compile(r"[ \t]*\\n[ \t]*")  # the marker, as a continuation writes it
_ENUMERATION = re.compile(r"^\s*\d+\s*[.)]\s*")


@dataclass(frozen=True)
class TransferConfig:
    samples: int = 64  # filtered synthetic inputs the target LoRA is distilled on
    few_shot: int = 5  # seed inputs shown in each generation prompt (at most the seeds there are)
    gen_batch: int = 16  # prompts sampled per generate() call
    max_new_tokens: int = 64  # one synthetic input, ending at its first (real) line break
    temperature: float = 1.0
    top_p: float = 0.95
    max_input_chars: int = 400  # seeds and synthetic inputs are cut alike (no length cue)
    max_rounds: int = 20  # extra generation batches the filter may spend reaching ``samples``
    # fewer kept than this after the budget fails the job (0: distil on the seeds alone)
    min_kept: int = 1
    disc_negatives: int = 32  # source-model synthetic inputs the discriminator learns as "no"
    disc_rank: int = 8
    disc_steps: int = 30
    disc_lr: float = 2e-3
    distill_steps: int = 60
    distill_batch: int = 8
    distill_lr: float = 2e-3
    # softmax temperature of teacher and student label distributions (Hinton et al.);
    # the loss is scaled by its square so the gradient size does not depend on it
    kd_temperature: float = 1.0
    # weigh the distillation inputs so each label the teacher gives them counts
    # alike, whatever the synthetic inputs' skew (generator.distill.balanced_weights)
    balance_labels: bool = True
    # distil on every input the filter scored, not only the kept ones: batches draw
    # each with probability proportional to the discriminator's p(real) (the kept
    # ones above 1/2, the seeds at 1); labelled tasks only (free-form: the kept ones).
    # False is the paper's hard filter (README "Transfer results" compares the two)
    soft_filter: bool = True
    max_answer_tokens: int = 48  # free-form tasks: the teacher's greedy answer length
    seed: int = 0

    def __post_init__(self) -> None:
        # name -> (lowest, highest) allowed; the upper bounds only stop absurd requests
        integers = {
            "samples": (1, 100_000), "few_shot": (1, 100), "gen_batch": (1, 1024),
            "max_new_tokens": (1, 4096), "max_input_chars": (1, 100_000),
            "max_rounds": (0, 100_000), "min_kept": (0, 100_000),
            "disc_negatives": (1, 100_000), "disc_rank": (1, 256), "disc_steps": (1, 1_000_000),
            "distill_steps": (1, 1_000_000), "distill_batch": (1, 1024),
            "max_answer_tokens": (1, 4096), "seed": (0, 2**62),
        }  # fmt: skip
        for name, (low, high) in integers.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidInput(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if self.min_kept > self.samples:
            raise InvalidInput(
                f"min_kept must be at most samples ({self.samples}), got {self.min_kept}"
            )
        for flag in ("balance_labels", "soft_filter"):
            if not isinstance(getattr(self, flag), bool):
                raise InvalidInput(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        numbers = {
            "temperature": 100.0, "top_p": 1.0, "disc_lr": 10.0, "distill_lr": 10.0,
            "kd_temperature": 100.0,
        }  # fmt: skip
        for key, top in numbers.items():
            number = getattr(self, key)
            if (
                isinstance(number, bool)
                or not isinstance(number, int | float)
                or not math.isfinite(number)
                or not 0 < number <= top
            ):
                raise InvalidInput(f"{key} must be a number in (0, {top:g}], got {number!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TransferConfig:
        """A config from JSON job parameters; unknown keys are an error, not ignored."""
        if not isinstance(values, dict):
            raise InvalidInput(f"transfer config must be a JSON object, got {values!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInput(
                f"unknown transfer settings {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    out = model.generate(  # type: ignore[operator]
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        temperature=float(config.temperature),
        top_p=float(config.top_p),
        top_k=0,  # nucleus sampling alone (some models default top_k)
        max_new_tokens=config.max_new_tokens,
        eos_token_id=line_end_ids(tokenizer),  # a row stops at its first line break
        pad_token_id=pad,
    )  # (B, T + new)
    texts = tokenizer.batch_decode(out[:, T:], skip_special_tokens=True)
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


# -- 2. the discriminator -------------------------------------------------------


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


# -- 3. rejection sampling --------------------------------------------------------


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
