"""Generator training options, declared once.

``GeneratorConfig`` is the one declaration of what a user can set when training
a generator, ``FinetuneConfig`` of what end-to-end fine-tuning takes. Each
field carries an ``Option`` (help text, bounds, choices) in its metadata;
validation, job parameters (``from_params``), the CLI options (``loramint
generator train`` and ``finetune``), the admin UI form and the test that holds
the REST body (``POST /v1/generators``) to the same names, defaults and bounds
all read it from here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from generator.hypernet.methods import METHODS, SG_LORA
from registry.errors import InvalidInput

SELECT_BY = ("weights", "task")


@dataclass(frozen=True)
class Option:
    """How one config field is offered to users and checked."""

    help: str
    label: str  # the admin UI's label
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the value must be above ``low``, not merely at least it
    high_open: bool = False
    choices: tuple[str, ...] = ()
    advanced: bool = False  # folded away in the admin UI form

    def check(self, name: str, value: Any, kind: type) -> None:
        """Raise ``InvalidInput`` naming ``name`` when ``value`` breaks the option."""
        if kind is str:
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise InvalidInput(
                    f"{name} must be one of {', '.join(self.choices)}, got {value!r}"
                )
            return
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if kind is int and not is_int:
            raise InvalidInput(f"{name} must be a whole number, got {value!r}")
        if kind is float and not (is_int or isinstance(value, float) and math.isfinite(value)):
            raise InvalidInput(f"{name} must be a number, got {value!r}")
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            if self.low == 0:
                word = "positive" if self.low_open else "non-negative"
                raise InvalidInput(f"{name} must be {word}, got {value!r}")
            word = "above" if self.low_open else "at least"
            raise InvalidInput(f"{name} must be {word} {_num(self.low)}, got {value!r}")
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            word = "below" if self.high_open else "at most"
            raise InvalidInput(f"{name} must be {word} {_num(self.high)}, got {value!r}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def option(default: Any, help: str, label: str, **bounds: Any) -> Any:
    """A dataclass field whose metadata is its ``Option``."""
    return field(default=default, metadata={"option": Option(help, label, **bounds)})


@dataclass(frozen=True)
class GeneratorConfig:
    method: str = option(SG_LORA, "sg-lora or icm-lora.", "Method", choices=METHODS)
    steps: int = option(800, "Optimiser steps.", "Steps", low=1, high=1_000_000)
    k: int | None = option(
        None,
        "SG-LoRA: experts per mixture (default: chosen leave-one-out, see select).",
        "Experts per mixture K (optional)",
        low=1,
        high=1000,
    )
    tau: float | None = option(
        None,
        "SG-LoRA: softmax temperature over the experts' similarities (default: chosen "
        "leave-one-out, see select).",
        "Temperature tau (optional)",
        low=0,
        low_open=True,
        high=100,
    )
    select: str = option(
        "weights",
        "How SG-LoRA chooses K and tau when not given: 'weights' (leave-one-out error in "
        "update space; seconds) or 'task' (leave-one-out accuracy of each mixture on the "
        "experts' tasks through the base model; ~15-25 s an expert on 2 CPU cores; falls "
        "back to 'weights' without the experts' tasks).",
        "Choose K and tau by",
        choices=SELECT_BY,
    )
    select_examples: int = option(
        16,
        "Examples of each training task that select 'task' scores.",
        "Examples scored per task",
        low=1,
        high=10_000,
        advanced=True,
    )
    gate: float | None = option(
        None,
        "SG-LoRA: serve the nearest expert alone when its description similarity leads "
        "the runner-up's by more than this (default: none, or chosen with K and tau by "
        "select 'task').",
        "Similarity gate (optional)",
        low=0,
        high=2,
    )
    hidden: int = option(128, "Network width.", "Network width", low=1, high=4096, advanced=True)
    latent: int = option(32, "Latent size.", "Latent size", low=1, high=1024, advanced=True)
    batch_size: int = option(
        8, "Samples per optimiser step.", "Batch size", low=1, high=4096, advanced=True
    )
    lr: float = option(
        1e-3, "Peak learning rate (AdamW, cosine decay).", "Learning rate", low=0,
        low_open=True, high=10, advanced=True,
    )  # fmt: skip
    weight_decay: float = option(
        1e-4, "AdamW weight decay.", "Weight decay", low=0, high=10, advanced=True
    )
    # None: 0.01 for SG-LoRA, 0.005 (the paper's) for ICM-LoRA
    kl_weight: float | None = option(
        None,
        "Weight of the KL term (default: 0.01 for SG-LoRA, 0.005 for ICM-LoRA).",
        "KL weight (optional)",
        low=0,
        high=100,
        advanced=True,
    )
    val_fraction: float = option(
        0.15,
        "Share of the experts held out to validate on (the best validation state is kept).",
        "Validation share",
        low=0,
        high=1,
        high_open=True,
        advanced=True,
    )
    eval_every: int = option(
        100, "Steps between validations.", "Validate every", low=1, high=1_000_000, advanced=True
    )
    task_vector_dropout: float = option(
        0.5,
        "ICM-LoRA: share of samples trained without their task vector, so one network "
        "serves callers with and without examples.",
        "Task-vector dropout",
        low=0,
        high=1,
        advanced=True,
    )
    # 2**53 - 1: the largest integer every JSON parser carries exactly (REST, UI)
    seed: int = option(0, "Training seed.", "Seed", low=0, high=2**53 - 1)

    def __post_init__(self) -> None:
        check_options(self)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> GeneratorConfig:
        """The config of a training request (a job's or the API's parameters): every
        field may be given, an unknown key is an error."""
        known = {f.name for f, _ in options()}
        unknown = sorted(set(params) - known)
        if unknown:
            raise InvalidInput(
                f"unknown generator settings {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**params)

    def to_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def beta(self) -> float:
        if self.kl_weight is not None:
            return self.kl_weight
        return 0.01 if self.method == SG_LORA else 0.005


@dataclass(frozen=True)
class FinetuneConfig:
    """End-to-end fine-tuning of a trained generator through the base model's task loss."""

    steps: int = option(60, "Fine-tuning steps (one task per step).", "Steps", low=1, high=100_000)
    lr: float = option(
        1e-4, "Peak learning rate (cosine decay).", "Learning rate", low=0, low_open=True, high=10
    )
    batch_size: int = option(8, "Examples per step.", "Batch size", low=1, high=4096)
    recon_weight: float = option(
        0.1,
        "Weight of the pull towards the task's own expert weights.",
        "Reconstruction weight",
        low=0,
        high=1000,
    )
    val_fraction: float = option(
        0.15,
        "Share of the training tasks kept for validation (the best state is kept).",
        "Validation share",
        low=0,
        high=1,
        high_open=True,
    )
    eval_every: int = option(
        0,
        "Steps between validations (0: a tenth of the run).",
        "Validate every",
        low=0,
        high=100_000,
    )
    max_prompt_tokens: int = option(
        256, "Longer prompts keep their end.", "Prompt tokens", low=9, high=100_000
    )
    seed: int = option(0, "Task order and validation split seed.", "Seed", low=0, high=2**53 - 1)

    def __post_init__(self) -> None:
        check_options(self)


def options(config: type = GeneratorConfig) -> list[tuple[dataclasses.Field[Any], Option]]:
    """Every field of ``config`` (a config class of this module) with its option, in
    declaration order."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(config)]


def option_kind(f: dataclasses.Field[Any]) -> type:
    """int, float or str: the field's type without ``| None``."""
    name = str(f.type).replace(" | None", "")
    return {"int": int, "float": float, "str": str}[name]


def check_options(config: Any) -> None:
    """``InvalidInput`` naming the first field of ``config`` that breaks its option."""
    for f, opt in options(type(config)):
        value = getattr(config, f.name)
        if value is None and f.default is None:
            continue
        opt.check(f.name, value, option_kind(f))
