"""Few-shot adaptation on the sandbox world (a tiny random Llama): selection among
candidates with its estimate, fitted mixture weights, refinement that never ends
worse than it started, and the served path that registers the result."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from generator.adapt.examples import FewShot
from generator.adapt.pipeline import NONE, AdaptConfig, Expert, adapt
from generator.adapt.refine import refine
from generator.adapt.scoring import score, score_all
from generator.adapt.weighting import fit_weights
from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.quality.heldout import oracle_weights
from generator.quality.lorahub import lorahub
from generator.sandbox import SandboxWorld
from generator.serve.generate import generate_adapters
from generator.serve.generator import Request
from generator.tasks.evaluation import Evaluator
from registry.errors import InvalidInput
from registry.lora_spec import parse_weights


def shots_of(world: SandboxWorld, n: int = 12) -> FewShot:
    moon = world.held_out()
    return FewShot(moon.train[:n], moon.labels)


def zoo_weights(world: SandboxWorld) -> list[Any]:
    """The registered weights of the sandbox zoo's cat, dog and bird adapters."""
    out = []
    for name in ("cat", "dog", "bird"):
        rec = world.registry.find_adapter(world.base, f"zoo-{name}")
        assert rec is not None
        out.append(parse_weights(world.registry.adapter_files(rec.id).weights))
    return out


def test_selection_chooses_among_candidates_and_reports_a_held_back_estimate(
    world: SandboxWorld,
) -> None:
    moon = world.held_out()
    evaluator = Evaluator.from_path(Path(world.base))
    oracle = oracle_weights(world.registry, world.base, moon)  # trained on these examples
    shots = shots_of(world)
    result = adapt(
        evaluator, moon.description, shots, {"oracle": oracle}, dict(oracle[0]), nearest="oracle"
    )
    report = result.report
    assert set(report["candidates"]) == {"oracle", NONE}
    assert result.selection.chosen == max(
        report["candidates"], key=lambda c: (report["candidates"][c], c == "oracle")
    )
    assert report["method"] == "selection" and report["examples"] == 12
    assert report["estimate"]["bare"] == report["candidates"][NONE]
    assert report["estimate"]["nearest"] == report["candidates"]["oracle"]
    assert 0.0 <= report["estimate"]["adapter"] <= 1.0 and report["metric"] == "balanced accuracy"
    assert result.adapter is (oracle if result.selection.chosen == "oracle" else None)


def test_candidates_scored_together_score_as_each_alone(world: SandboxWorld) -> None:
    moon = world.held_out()
    evaluator = Evaluator.from_path(Path(world.base))
    oracle = oracle_weights(world.registry, world.base, moon)
    halved = (oracle[0], {k: v * 0.5 if ".lora_B." in k else v for k, v in oracle[1].items()})
    candidates = {"oracle": oracle, "halved": halved, NONE: None}
    together = score_all(evaluator, moon.description, shots_of(world), candidates)
    assert list(together) == list(candidates)
    for name, adapter in candidates.items():
        alone = score(evaluator, moon.description, shots_of(world), adapter)
        assert together[name].mean()[0] == alone.mean()[0], name
        assert torch.allclose(together[name].margin, alone.margin, atol=1e-4), name
    assert not torch.allclose(together["oracle"].margin, together[NONE].margin, atol=1e-3)


def test_refinement_never_ends_worse_on_its_held_back_examples(world: SandboxWorld) -> None:
    moon = world.held_out()
    evaluator = Evaluator.from_path(Path(world.base))
    start = oracle_weights(world.registry, world.base, moon)
    refined = refine(evaluator, moon.description, shots_of(world), start, dict(start[0]), steps=6)
    losses = refined.val_losses
    assert losses[0][0] == 0 and refined.steps_run <= 6
    assert refined.best_step == min(losses, key=lambda c: (c[1], c[0]))[0]
    assert set(refined.adapter[1]) == set(start[1])
    fresh = refine(evaluator, moon.description, shots_of(world), None, dict(start[0]), steps=2)
    assert set(fresh.adapter[1]) == set(start[1])  # a LoRA from scratch: the same tensors
    with pytest.raises(InvalidInput, match="at least 2 examples"):
        refine(evaluator, moon.description, shots_of(world, 1), start, dict(start[0]), steps=2)


def test_weighting_fits_a_mixture_of_the_experts(world: SandboxWorld) -> None:
    import torch

    moon = world.held_out()
    evaluator = Evaluator.from_path(Path(world.base))
    template = oracle_weights(world.registry, world.base, moon)[0]
    experts = zoo_weights(world)
    sims = torch.tensor([0.5, 0.4, 0.3])
    weighted = fit_weights(
        evaluator, moon.description, shots_of(world).examples, template, experts, sims, steps=3
    )
    assert weighted.weights.shape == (3,) and abs(float(weighted.weights.sum()) - 1) < 1e-5
    assert len(weighted.losses) == 3 and set(weighted.adapter[1]) == set(experts[0])
    blocks = fit_weights(
        evaluator, moon.description, shots_of(world).examples, template, experts, sims,
        steps=2, per_block=True,
    )  # fmt: skip
    assert blocks.weights.ndim == 2 and blocks.weights.shape[1] == 3
    result = adapt(
        evaluator, moon.description, shots_of(world), {}, dict(template),
        experts=[Expert(n, w, float(s)) for n, w, s in zip("abc", experts, sims, strict=True)],
        config=AdaptConfig(weighting=True, weighting_steps=2, folds=2),
    )  # fmt: skip
    assert result.method == "weighting" and set(result.report["weighting"]) == {"a", "b", "c"}
    assert result.estimate is not None and 0.0 <= result.estimate <= 1.0  # 2 folds, refitted


def test_lorahub_searches_the_mixture_quietly(world: SandboxWorld) -> None:
    moon = world.held_out()
    evaluator = Evaluator.from_path(Path(world.base))
    template = oracle_weights(world.registry, world.base, moon)[0]
    experts = zoo_weights(world)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = lorahub(evaluator, moon.description, shots_of(world).examples, template, experts)
    assert len(found.weights) == 3 and all(abs(w) <= 1.5 for w in found.weights)
    assert set(found.adapter[1]) == set(experts[0])
    assert not [w for w in caught if "RHOEND" in str(w.message)]  # scipy's lowered radius


def test_served_few_shot_generation_registers_the_chosen_adapter(world: SandboxWorld) -> None:
    reg = world.registry
    train_generator(reg, world.base, GeneratorConfig(hidden=32, latent=4, steps=4))
    moon = world.held_out()

    def generate(shots: FewShot, config: AdaptConfig | None = None) -> tuple[int, dict[str, Any]]:
        request = Request(moon.description, fewshot=shots, adapt=config or AdaptConfig())
        [(rec, made)] = generate_adapters(reg, [request], base_model=world.base, method="sg-lora")
        assert made.fewshot is not None and rec.meta["fewshot"] == made.fewshot
        return rec.id, made.fewshot

    first, report = generate(shots_of(world))
    assert report["chosen"] in report["candidates"] and "generated" in report["candidates"]
    assert any(c.startswith("expert:") for c in report["candidates"])
    assert generate(shots_of(world))[0] == first  # the same request: the same adapter
    other, _ = generate(shots_of(world, 8))
    assert other != first  # other examples: another adapter
    refined, refined_report = generate(shots_of(world), AdaptConfig(refine_steps=2, folds=2))
    assert refined not in (first, other) and refined_report["method"] == "selection+refine"
    assert refined_report["refine"]["steps_run"] <= 2


@pytest.mark.parametrize("bad", [{"refine_steps": -1}, {"weighting_steps": 0}, {"folds": 0}])
def test_adapt_config_names_the_setting_out_of_range(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match=next(iter(bad))):
        AdaptConfig(**bad)
