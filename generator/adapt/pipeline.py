"""Few-shot adaptation: from a description, its candidate adapters and a handful of
labelled examples to one adapter, and an honest estimate of how good it is.

1. Selection: every candidate (the zero-shot generated adapter, the nearest
   experts' own weights, mixtures of the top experts, no adapter) is scored on
   the examples, all of them in the same batched passes; the best by balanced
   accuracy (the mean of each label's accuracy) is chosen, so a draw of
   examples that holds more of one label does not favour a candidate leaning
   to it (``generator.adapt.selection``).
2. Weighting (optional): the mixture weights of the nearest experts are fitted
   on the examples (``generator.adapt.weighting``); the result replaces the
   selected adapter.
3. Refinement (optional, ``refine_steps``): the adapter so far is trained
   further on the examples, early-stopped on a held-back share of them
   (``generator.adapt.refine``). It starts from the candidate with the best
   plain accuracy on the examples, the start its settings were chosen with
   (weighing the labels alike, in the start, in refinement's losses or in
   both, did not do better on training tasks; ``docs/experiments.md``);
   weighting and refinement report plain accuracy.

The estimate of the returned adapter never comes from examples it was chosen
or trained on: with selection alone it is nested cross-validation of the
choice; with weighting or refinement the whole pipeline is run again on all
folds but one and scored on the fold left out (``estimate=False`` skips those
runs; the evaluation harness, which scores on a test split, does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from generator.adapt.examples import FewShot
from generator.adapt.refine import refine
from generator.adapt.scoring import Scores, score, score_all
from generator.adapt.selection import FOLDS, Selection, best, select
from generator.adapt.weighting import fit_weights
from generator.tasks.evaluation import Evaluator
from registry.errors import InvalidInput
from registry.lora_spec import Adapter, Tensors

NONE = "none"  # the candidate that is no adapter: the base model as it is


@dataclass(frozen=True)
class Expert:
    """An expert the weighting may mix: its name, registered weights and similarity."""

    name: str
    weights: Tensors
    similarity: float


@dataclass(frozen=True)
class AdaptConfig:
    weighting: bool = False
    weighting_steps: int = 20
    weighting_lr: float = 0.1
    per_block: bool = False
    refine_steps: int = 0
    refine_lr: float = 3e-3  # chosen on training tasks (bench/fewshot_settings.py)
    folds: int = FOLDS
    estimate: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.refine_steps <= 10_000:
            raise InvalidInput(f"refine_steps must be in [0, 10000], got {self.refine_steps}")
        if not 1 <= self.weighting_steps <= 10_000:
            raise InvalidInput(f"weighting_steps must be in [1, 10000], got {self.weighting_steps}")
        if not 1 <= self.folds <= 64:
            raise InvalidInput(f"folds must be in [1, 64], got {self.folds}")

    @property
    def trains(self) -> bool:
        return self.weighting or self.refine_steps > 0


@dataclass
class Adapted:
    adapter: Adapter | None  # None: no adapter helps (the bare model)
    method: str  # "selection", "weighting", "selection+refine", "weighting+refine"
    selection: Selection
    estimate: float | None  # the returned adapter's expected score on new inputs
    report: dict[str, Any] = field(default_factory=dict)


def adapt(
    evaluator: Evaluator,
    description: str,
    fewshot: FewShot,
    candidates: dict[str, Adapter | None],
    template: dict[str, Any],
    *,
    experts: Sequence[Expert] = (),
    nearest: str | None = None,
    config: AdaptConfig | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Adapted:
    """The adapter for ``description`` given ``fewshot``: the best of ``candidates``,
    optionally re-weighted from ``experts`` and refined (see the module docstring).
    ``nearest`` names the candidate reported as "the nearest expert"."""
    config = config or AdaptConfig()
    if NONE not in candidates:
        candidates = {**candidates, NONE: None}
    t0 = time.perf_counter()
    scored = score_all(evaluator, description, fewshot, candidates)
    folds = fewshot.folds(config.folds, config.seed)
    # weighting and refinement are measured in plain accuracy, refinement starting from
    # its pick (module docstring); selection alone in balanced accuracy
    balanced = fewshot.is_classification and not config.trains
    selection = select(scored, folds, balanced=balanced)
    seconds = {"selection": round(time.perf_counter() - t0, 2)}
    adapter, method = candidates[selection.chosen], "selection"
    estimate: float | None = selection.estimate
    details: dict[str, Any] = {}
    if config.trains:

        def run(
            part: FewShot, known: dict[str, Scores] | None = None
        ) -> tuple[Adapter | None, dict[str, Any]]:
            return _train(
                evaluator, description, part, candidates, template, experts, config, known
            )

        t1 = time.perf_counter()
        if on_progress:
            on_progress("training on the examples")
        adapter, details = run(fewshot, scored)  # the candidates' scores on it: above
        method = ("weighting" if config.weighting else "selection") + (
            "+refine" if config.refine_steps else ""
        )
        seconds["training"] = round(time.perf_counter() - t1, 2)
        estimate = None
        if config.estimate and len(folds) > 1:
            estimate = _cross_validate(evaluator, description, fewshot, folds, run, on_progress)
            seconds["estimate"] = round(time.perf_counter() - t1 - seconds["training"], 2)
    report = {
        "method": method,
        "chosen": selection.chosen,
        "candidates": selection.scores,
        "examples": len(fewshot),
        "metric": ("balanced accuracy" if balanced else "accuracy")
        if fewshot.is_classification
        else "answer log-likelihood",
        "estimate": {
            "adapter": estimate,
            "bare": selection.scores[NONE],
            "nearest": selection.scores.get(nearest) if nearest else None,
            "how": f"{len(folds)}-fold cross-validation: every score is on examples the "
            "adapter was neither chosen nor trained on",
        },
        **details,
        "seconds": seconds,
    }
    return Adapted(adapter, method, selection, estimate, report)


def _train(
    evaluator: Evaluator,
    description: str,
    part: FewShot,
    candidates: dict[str, Adapter | None],
    template: dict[str, Any],
    experts: Sequence[Expert],
    config: AdaptConfig,
    known: dict[str, Scores] | None = None,
) -> tuple[Adapter | None, dict[str, Any]]:
    """Selection (or weighting) then refinement, on ``part`` only; ``known``: the
    candidates' scores on ``part`` where the caller has them already."""
    details: dict[str, Any] = {}
    if config.weighting:
        if not experts:
            raise InvalidInput("weighting needs the nearest experts")
        weighted = fit_weights(
            evaluator, description, part.examples, template, [e.weights for e in experts],
            torch.tensor([e.similarity for e in experts]), steps=config.weighting_steps,
            lr=config.weighting_lr, per_block=config.per_block, seed=config.seed,
        )  # fmt: skip
        start: Adapter | None = weighted.adapter
        shown = weighted.weights if weighted.weights.ndim == 1 else weighted.weights.mean(0)
        details["weighting"] = {
            e.name: round(float(w), 4) for e, w in zip(experts, shown, strict=True)
        }
    else:
        scored = known if known is not None else score_all(evaluator, description, part, candidates)
        start = candidates[best(scored, balanced=False)]
    if not config.refine_steps:
        return start, details
    refined = refine(
        evaluator, description, part, start, template, steps=config.refine_steps,
        lr=config.refine_lr, seed=config.seed,
    )  # fmt: skip
    details["refine"] = {
        "best_step": refined.best_step,
        "steps_run": refined.steps_run,
        "val_losses": refined.val_losses,
    }
    return refined.adapter, details


def _cross_validate(
    evaluator: Evaluator,
    description: str,
    fewshot: FewShot,
    folds: Sequence[Sequence[int]],
    run: Callable[[FewShot], tuple[Adapter | None, dict[str, Any]]],
    on_progress: Callable[[str], None] | None,
) -> float | None:
    """The mean over folds of the pipeline's adapter, built without the fold, on it."""
    total, count = 0.0, 0
    for f, fold in enumerate(folds):
        if on_progress:
            on_progress(f"estimate: fold {f + 1}/{len(folds)}")
        rest = [i for g, other in enumerate(folds) if g != f for i in other]
        if len(rest) < 2:
            continue
        adapter, _ = run(fewshot.subset(rest))
        held = fewshot.subset(fold)
        total += score(evaluator, description, held, adapter).mean()[0] * len(fold)
        count += len(fold)
    return round(total / count, 4) if count else None
