"""Every download carries a model card: a zip that PEFT still loads, whose README.md
front matter parses as YAML with the Hub's fields, and whose body tells how the adapter
was made (a generated one: its generator, method, seed, and its experts with weights)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import yaml

from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.sandbox import SandboxWorld
from generator.serve.generate import generate_adapters
from generator.serve.generator import Request
from registry import base_models
from registry.model_card import CARD_NAME
from registry.service import Registry


def front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    parsed = yaml.safe_load(head)
    assert isinstance(parsed, dict)
    return parsed


def test_a_generated_adapter_s_zip_loads_and_its_card_tells_its_story(
    world: SandboxWorld, tmp_path: Path
) -> None:
    reg: Registry = world.registry
    gen, _ = train_generator(reg, world.base, GeneratorConfig(hidden=32, latent=4, steps=10))
    [(made, _)] = generate_adapters(
        reg, [Request("Does the text mention the moon? Answer yes or no.", seed=3)],
        base_model=world.base, method="sg-lora",
    )  # fmt: skip
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(io.BytesIO(reg.adapter_zip(made.id))) as zf:
        assert sorted(zf.namelist()) == [
            CARD_NAME,
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
        zf.extractall(folder)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world.base), folder)
    assert any("lora_B" in name for name, _ in model.named_parameters())

    card = (folder / CARD_NAME).read_text()
    front = front_matter(card)
    assert front["library_name"] == "peft" and front["base_model_relation"] == "adapter"
    assert {"lora", "peft", "generated"} <= set(front["tags"]) and front["license"] == "other"
    assert front["loramint"]["sha256"] == made.sha256
    assert "base_model" not in front  # a local folder has no Hub id to name
    assert f"sg-lora generator {gen.id}" in card and "seed 3" in card
    experts = made.meta["neighbours"]
    assert experts
    for expert in experts:
        assert f"`{expert['name']}` (adapter {expert['adapter_id']}" in card
        assert f"{expert['weight']:.3f}" in card
    assert "PeftModel.from_pretrained" in card and f"/v1/adapters/{made.id}/download" in card
    # the same card through export, to a folder and to a zip
    exported = reg.export_adapter(made.id, tmp_path / "exported")
    assert (exported / CARD_NAME).read_text() == card

    # a deleted expert is named as such; the card still renders
    gone = experts[0]["adapter_id"]
    reg.delete_adapter(gone)
    assert f"adapter {gone} (deleted since)" in reg.model_card(made.id)


def test_a_trained_adapter_s_card_has_its_task_data_and_scores(world: SandboxWorld) -> None:
    reg: Registry = world.registry
    trained = reg.find_adapter(world.base, "zoo-moon")
    assert trained is not None and trained.provenance == "trained"
    card = reg.model_card(trained.id)
    front = front_matter(card)
    assert "trained" in front["tags"]
    assert front["data_licenses"] == [trained.meta["licence"]]
    assert f"on the task `{trained.meta['task']}`" in card
    if "accuracy" in trained.metrics:
        assert f"{trained.metrics['accuracy']:.3f}" in card


def test_offline_models_name_their_hub_ids() -> None:
    assert base_models.hub_id("smollm2-135m-instruct", "x") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_models.hub_id("org/model", "hf:org/model") == "org/model"
    assert base_models.hub_id("/models/mine", "local:/models/mine") is None
