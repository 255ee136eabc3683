"""`loramint generate`, `generator list` and the generators `eval generators` scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.sandbox import SandboxWorld
from registry.errors import GeneratorNotFound, InvalidInput
from registry.service import Registry
from registry.settings import Settings


def test_cli_generate_and_list(world: SandboxWorld, tmp_path: Path) -> None:
    settings: Settings = world.settings
    reg: Registry = world.registry
    if reg.latest_generator(world.base, "sg-lora") is None:
        train_generator(reg, world.base, GeneratorConfig(hidden=32, latent=4, steps=10))
    env = os.environ | {
        "LORAMINT_HOME": str(settings.home),
        "LORAMINT_DATABASE_URL": settings.database_url,
        "LORAMINT_MODEL_CACHE": str(settings.model_cache),
    }
    cli = [sys.executable, "-m", "api.cli"]
    run = subprocess.run(
        [*cli, "generate", "Does the text mention a sun?", "--base-model", world.base,
         "--seed", "3", "--out", str(tmp_path / "a"), "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    payload = json.loads(run.stdout)
    assert payload["seed"] == 3 and (tmp_path / "a" / "adapter_model.safetensors").exists()
    bad = subprocess.run(
        [*cli, "generate", "x", "--base-model", world.base, "--method", "nope"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown method")
    listed = subprocess.run(
        [*cli, "generator", "list", "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["method"] in (
        "sg-lora",
        "icm-lora",
    )


def test_eval_scores_the_generators_asked_for(world: SandboxWorld) -> None:
    from api.cli_eval import chosen_generators, evaluated_generators

    reg: Registry = world.registry
    base = world.base
    a, _ = train_generator(reg, base, GeneratorConfig(hidden=32, latent=4, steps=2), name="pick-a")
    b, _ = train_generator(reg, base, GeneratorConfig(hidden=32, latent=4, steps=2), name="pick-b")
    cols = chosen_generators(reg, base, f"{a.id},{b.id}")
    assert {c: r.id for c, r in cols.items()} == {f"sg-lora#{a.id}": a.id, f"sg-lora#{b.id}": b.id}
    assert chosen_generators(reg, base, None).keys() == evaluated_generators(reg, base).keys()
    with pytest.raises(InvalidInput, match="comma-separated ids"):
        chosen_generators(reg, base, f"{a.id},b")
    with pytest.raises(InvalidInput, match="not smollm2"):
        chosen_generators(reg, "smollm2-135m-instruct", str(a.id))
    with pytest.raises(GeneratorNotFound):
        chosen_generators(reg, base, "999999")
