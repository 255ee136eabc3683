"""Trans-LoRA settings: one frozen dataclass, checked on construction, built from a
job's JSON parameters (unknown keys are an error)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from registry.errors import InvalidInput


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
    # alike, whatever the synthetic inputs' skew (generator.transfer.distill.balanced_weights)
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


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` transfer settings (the CLI's ``--set``, the admin UI's settings box);
    values are JSON (numbers, true/false) or else plain text."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"a transfer setting is KEY=VALUE, got {pair!r}")
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip()] = value.strip()
    return settings
