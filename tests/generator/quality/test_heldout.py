"""The held-out quality harness scores every baseline and generator column."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from generator.experts import ExpertBank, candidate_records
from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.quality import multitask
from generator.quality.heldout import MULTITASK, evaluate, write
from generator.sandbox import SandboxWorld
from generator.serve.generator import Generator, Request
from generator.tasks.evaluation import Evaluator
from registry.errors import InvalidInput
from registry.service import Registry


def sg_setup(world: SandboxWorld) -> tuple[dict[str, Generator], ExpertBank, Evaluator]:
    """The sandbox's SG-LoRA generator (trained once per module), its experts, an evaluator."""
    reg, base = world.registry, world.base
    config = GeneratorConfig(hidden=32, latent=4, steps=10, eval_every=5)
    rec = reg.latest_generator(base, "sg-lora") or train_generator(reg, base, config)[0]
    bank = ExpertBank.from_registry(reg, base, ids=rec.training_adapter_ids)
    return {"sg-lora": Generator.from_registry(reg, rec)}, bank, Evaluator.from_path(Path(base))


def test_quality_harness_scores_every_column(world: SandboxWorld, tmp_path: Path) -> None:
    reg: Registry = world.registry
    base = world.base
    gens, bank, evaluator = sg_setup(world)
    held = [t for t in world.suite if t.held_out]
    report = evaluate(
        reg, evaluator, held, base_model=base, generators=gens, bank=bank, k=2, tau=0.1,
        min_gain=0.01,
    )  # fmt: skip
    row = report.rows[0]
    assert row.task == "moon" and "zoo-moon" not in row.neighbours
    assert set(row.scores) == {"base", "nearest", "weighted-mean", "sg-mixture-mean", "sg-lora"}
    assert all(0.0 <= v <= 1.0 for v in row.scores.values())
    # the row says how many experts SG-LoRA mixed for the task
    used = len(gens["sg-lora"].generate([Request(held[0].description)])[0].neighbours)
    k = int(gens["sg-lora"].ckpt.hyper["k"])
    assert used in (1, k) and row.choices == {
        "sg-lora": "nearest alone" if used == 1 else f"top-{k}"
    }
    path = write(report, tmp_path)
    data = json.loads(path.read_text())
    assert data["columns"][-1] == "oracle" and "sg-lora" in data["relative_to_oracle"]
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| moon |" in path.with_suffix(".md").read_text()


def test_multitask_baseline_splits_intervals_and_dropped_tasks(
    world: SandboxWorld, tmp_path: Path
) -> None:
    """The multi-task LoRA trains on the training tasks, is no expert and is scored as its
    own column; tasks are summarised per split with intervals, the generator's paired
    differences are given, and a task whose oracle gains too little is only listed."""
    reg: Registry = world.registry
    base = world.base
    training = [t for t in world.suite if not t.held_out]
    with pytest.raises(InvalidInput, match="held out"):
        multitask.train(reg, base, list(world.suite), steps_per_task=1)
    rec, trained = multitask.train(reg, base, training, steps_per_task=2)
    assert trained and rec.meta["tasks"] == [t.name for t in training]
    assert rec.meta["train_config"]["steps"] == 2 * len(training)
    assert rec.meta["train_config"]["rank"] == 4  # the sandbox zoo's recipe
    again, trained_again = multitask.train(reg, base, training, steps_per_task=2)
    assert again.id == rec.id and not trained_again
    assert rec.id not in {r.id for r in candidate_records(reg, base)}

    gens, bank, evaluator = sg_setup(world)
    moon = next(t for t in world.suite if t.held_out)
    # the held-out task again, standing in for a new family's task, with a wording of its
    # own; and the training task whose zoo adapter gained least, to be dropped
    other = dataclasses.replace(
        moon, meta={"split": "new_family", "eval_description": "Does the text name the moon?"}
    )

    def zoo_gain(t: object) -> float:
        m = reg.find_adapter(base, f"zoo-{t.name}").metrics  # type: ignore[attr-defined, union-attr]
        return float(m["accuracy"] - m["base_accuracy"])

    weak = min(training, key=zoo_gain)
    min_gain = max(zoo_gain(weak), 0.0) + 0.01
    assert zoo_gain(moon) > min_gain
    adapter = multitask.load(reg, base)
    assert adapter is not None

    report = evaluate(
        reg, evaluator, [moon, other, weak], base_model=base, generators=gens, bank=bank,
        k=2, tau=0.1, multitask=adapter, min_gain=min_gain,
    )  # fmt: skip
    assert report.methods[4] == MULTITASK and report.splits == ["held_out", "new_family"]
    assert [r.description for r in report.rows] == [
        moon.description, "Does the text name the moon?"
    ]  # fmt: skip
    assert [r.task for r in report.dropped] == [weak.name]
    data = json.loads(write(report, tmp_path).read_text())
    for split in ("held_out", "new_family"):
        summary = data["splits"][split]
        assert summary["tasks"] == 1
        share = summary["gain_share"]["sg-lora"]
        assert share["low"] <= share["value"] <= share["high"]
        assert summary["gain_share"]["base"]["value"] == 0
        assert {(d["method"], d["against"]) for d in summary["differences"]} == {
            ("sg-lora", "nearest"),
            ("sg-lora", MULTITASK),
        }
    row = data["tasks"][0]
    assert len(row["correct"]["oracle"]) == row["n"] == len(moon.test)
    assert row["correct"]["base"].count("1") == round(row["base"] * row["n"])
    md = (tmp_path / f"quality-{base.replace('/', '_')}.md").read_text()
    assert "share of its gain" in md and "sg-lora - multi-task" in md

    assert data["dropped"] == [{
        "task": weak.name, "split": "held_out", "base": report.dropped[0].scores["base"],
        "oracle": report.dropped[0].oracle,
    }]  # fmt: skip
    assert f"Dropped, the oracle gains less than {min_gain}: {weak.name}" in md
    with pytest.raises(InvalidInput, match="no task's oracle gains"):
        evaluate(
            reg, evaluator, [weak], base_model=base, generators=gens, bank=bank, k=2, tau=0.1,
            min_gain=min_gain,
        )  # fmt: skip
