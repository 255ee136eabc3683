"""A generated adapter adapted to the caller's labelled examples.

The candidates a few-shot request chooses among (``generator.adapt``): the
adapter the generator just decoded, the nearest experts' own weights, softmax
mixtures of the top experts' weights, and no adapter at all. Weighting mixes
the nearest experts with weights fitted on the examples. The result replaces
the generated weights, and its report (every candidate's score, the estimate)
travels with the adapter into the registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from generator.adapt.pipeline import NONE, AdaptConfig, Adapted, Expert, adapt
from generator.hypernet.methods import SG_LORA
from generator.hypernet.mixture import mix, softmax_weights
from generator.serve.generator import Generated, Generator, Neighbour, Request
from registry.lora_spec import Adapter

EXPERTS = 3  # the nearest experts offered alone
MIXTURES = (2, 4, 8)  # the top-K mixtures offered
WEIGHTED = 8  # the experts a weighting mixes
GENERATED = "generated"


@dataclass
class Candidates:
    """What a few-shot request chooses among, and where each candidate came from."""

    adapters: dict[str, Adapter | None]  # name -> (config, weights); None: no adapter
    mixed: dict[str, list[Neighbour]]  # name -> the experts it mixes, with their weights
    experts: list[Expert]  # the nearest experts a weighting mixes
    by_name: dict[str, Any]  # expert name -> its ExpertBank entry
    nearest: str | None  # the candidate that is the nearest expert


def candidates_for(generator: Generator, made: Generated) -> Candidates:
    """The candidates for ``made`` (a zero-shot adapter of ``generator``): itself and,
    for SG-LoRA, the nearest experts alone and mixed (module docstring)."""
    config = made.config
    mixed = {GENERATED: made.neighbours, NONE: []}
    out = Candidates({GENERATED: (config, made.weights)}, mixed, [], {}, None)
    if generator.method != SG_LORA or made.embedding is None:
        return out
    layout = generator.ckpt.layout
    tau = float(generator.ckpt.hyper["tau"])
    query = np.asarray(made.embedding, dtype=np.float32)
    query = query / max(float(np.linalg.norm(query)), 1e-12)
    found, sims = generator.neighbours(query, max(WEIGHTED, *MIXTURES))
    for e, s in list(zip(found, sims, strict=True))[:EXPERTS]:
        name = f"expert:{e.record.name}"
        out.adapters[name] = (config, layout.unflatten(e.weights))
        out.mixed[name] = [Neighbour(e.id, e.record.name, round(float(s), 5), 1.0)]
    out.nearest = f"expert:{found[0].record.name}"
    for k in MIXTURES:
        if k > len(found):
            continue
        w = softmax_weights(sims[:k], tau)
        rows = mix(w, [e.weights for e in found[:k]]).mean
        name = f"mixture:top-{k}"
        out.adapters[name] = (config, layout.unflatten(rows))
        out.mixed[name] = [
            Neighbour(e.id, e.record.name, round(float(s), 5), round(float(a), 5))
            for e, s, a in zip(found[:k], sims[:k], w, strict=True)
        ]
    out.experts = [
        Expert(e.record.name, layout.unflatten(e.weights), float(s))
        for e, s in zip(found[:WEIGHTED], sims[:WEIGHTED], strict=True)
    ]
    out.by_name = {e.record.name: e for e in found[:WEIGHTED]}
    return out


def adapt_generated(
    generator: Generator,
    request: Request,
    made: Generated,
    *,
    on_progress: Callable[[str], None] | None = None,
) -> Generated:
    """``made`` adapted to ``request.fewshot`` (the request must carry examples)."""
    assert request.fewshot is not None
    found = candidates_for(generator, made)
    result = adapt(
        generator.evaluator(),
        request.description,
        request.fewshot,
        found.adapters,
        dict(made.config),
        experts=found.experts,
        nearest=found.nearest,
        config=request.adapt,
        on_progress=on_progress,
    )
    if result.method.startswith("weighting"):
        learned = result.report.get("weighting", {})
        neighbours = [
            Neighbour(found.by_name[e.name].id, e.name, round(e.similarity, 5),
                      learned.get(e.name, 0.0))
            for e in found.experts
        ]  # fmt: skip
    else:
        neighbours = found.mixed.get(result.selection.chosen, [])
    return dataclasses.replace(
        made,
        weights=_weights(result, made),
        neighbours=neighbours,
        fewshot=result.report,
    )


def _weights(result: Adapted, made: Generated) -> dict[str, torch.Tensor]:
    """The adapted weights; no adapter is a LoRA whose update is zero (B = 0)."""
    if result.adapter is not None:
        return result.adapter[1]
    return {
        k: (torch.zeros_like(v) if ".lora_B." in k else v.clone()) for k, v in made.weights.items()
    }


def training_seconds(
    selection_seconds: float, candidates: int, examples: int, config: AdaptConfig
) -> float:
    """A rough forecast of the training a request asks for, from how long scoring its
    candidates took: a training step on a batch costs about three forward passes."""
    per_example = selection_seconds / max(1, candidates * examples)
    batch = min(16, examples)
    steps = (config.weighting_steps if config.weighting else 0) + config.refine_steps
    runs = 1 + (config.folds if config.estimate else 0)
    return 3 * per_example * batch * steps * runs
