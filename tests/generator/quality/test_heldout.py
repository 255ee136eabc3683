"""The held-out quality harness scores every baseline and generator column."""

from __future__ import annotations

import json
from pathlib import Path

from generator.experts import ExpertBank
from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.quality.heldout import evaluate, write
from generator.sandbox import SandboxWorld
from generator.serve.generator import Generator, Request
from generator.tasks.evaluation import Evaluator
from registry.service import Registry


def test_quality_harness_scores_every_column(world: SandboxWorld, tmp_path: Path) -> None:
    reg: Registry = world.registry
    base = world.base
    rec = (
        reg.latest_generator(base, "sg-lora")
        or train_generator(reg, base, GeneratorConfig(hidden=32, latent=4, steps=10, eval_every=5))[
            0
        ]
    )
    gens = {"sg-lora": Generator.from_registry(reg, rec)}
    bank = ExpertBank.from_registry(reg, base, ids=rec.training_adapter_ids)
    evaluator = Evaluator.from_path(Path(base))
    held = [t for t in world.suite if t.held_out]
    report = evaluate(
        reg, evaluator, held, base_model=base, generators=gens, bank=bank, k=2, tau=0.1
    )
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
