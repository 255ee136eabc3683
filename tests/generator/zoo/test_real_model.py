"""Smoke test of the trainer, evaluation and zoo on the real SmolLM2-135M and a real task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from generator.tasks.suite import build_default_suite
from generator.tasks.task import TaskSuite
from generator.zoo.build import build_zoo
from generator.zoo.trainer import TrainConfig
from registry.embeddings import MiniLMEmbedder
from registry.service import Registry
from registry.settings import Settings

pytestmark = pytest.mark.slow


def test_real_model_zoo_smoke(
    smollm2_cache: dict[str, Any], tmp_path: Path, embedder: MiniLMEmbedder
) -> None:
    build_default_suite(tmp_path / "suite")
    task = TaskSuite(tmp_path / "suite").load("wordnet_animal")
    # a small slice keeps this a smoke test: 3 steps of 8, 24 test examples
    task = type(task)(**{**task.__dict__, "train": task.train[:24], "test": task.test[:24]})
    settings = Settings(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'r.db'}",
        model_cache=smollm2_cache["cache"],
    )
    reg = Registry(settings, embedder=embedder)
    [entry] = build_zoo(
        reg, [task], base_model="smollm2-135m-instruct", config=TrainConfig(steps=3, batch_size=8)
    )
    rec = reg.get_adapter(entry.adapter_id)
    assert rec.rank == 8 and rec.alpha == 16 and rec.target_modules == ["q_proj", "v_proj"]
    assert rec.metrics["eval_n"] == 24 and 0.0 <= rec.metrics["accuracy"] <= 1.0
    assert rec.metrics["base_accuracy"] > 0.3  # the bare model is far from always wrong on yes/no
    assert rec.metrics["tokens_per_second"] > 0
    hits = reg.search("is this word's definition about a kind of creature?", k=1)
    assert hits[0].adapter.id == rec.id
