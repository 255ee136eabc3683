"""Generating into the registry with generators trained on the sandbox zoo (a tiny
random Llama): register, export, load with PEFT; ICM-LoRA with and without
examples; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from generator.adapt.examples import FewShot
from generator.fit.config import GeneratorConfig
from generator.fit.train import train_generator
from generator.hypernet.checkpoint import Checkpoint
from generator.sandbox import TASKS, SandboxWorld
from generator.serve.generate import generate_adapters
from generator.serve.generator import Generator, Request
from registry.errors import GeneratorNotFound, InvalidInput
from registry.service import Registry


def test_train_generate_register_export_and_load(world: SandboxWorld, tmp_path: Path) -> None:
    reg: Registry = world.registry
    base = world.base
    cfg = GeneratorConfig(hidden=32, latent=4, steps=20, eval_every=10, val_fraction=0.2)
    rec, metrics = train_generator(reg, base, cfg)
    held = reg.find_adapter(base, "zoo-moon")
    assert held is not None and held.id not in rec.training_adapter_ids
    assert len(rec.training_adapter_ids) == len(TASKS) and rec.method == "sg-lora"
    assert metrics["k"] >= 1 and metrics["val_experts"] == 1 and rec.metrics["parameters"] > 0
    ckpt = Checkpoint.from_bytes(reg.generator_checkpoint(rec.id))
    assert ckpt.expert_ids == rec.training_adapter_ids

    desc = "Does the text mention the moon? Answer yes or no."
    [(made, gen)] = generate_adapters(
        reg, [Request(desc, seed=7)], base_model=base, method="sg-lora"
    )
    assert made.provenance == "generated" and made.meta["generator_id"] == rec.id
    assert made.meta["seed"] == 7 and made.meta["neighbours"]
    assert {p.adapter_id for p in made.parents} <= set(rec.training_adapter_ids)
    assert all(p.role == "expert" for p in made.parents)
    # the same request again is the same registered adapter
    [(again, _)] = generate_adapters(
        reg, [Request(desc, seed=7)], base_model=base, method="sg-lora"
    )
    assert again.id == made.id and reg.count_adapters() == len(TASKS) + 2

    out = reg.export_adapter(made.id, tmp_path / "gen")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    key = next(k for k in gen.weights if "lora_B" in k)
    peft_key = key.replace("lora_B.weight", "lora_B.default.weight")
    assert torch.allclose(loaded[peft_key], gen.weights[key])


def test_icm_with_and_without_examples(world: SandboxWorld) -> None:
    reg: Registry = world.registry
    base = world.base
    cfg = GeneratorConfig(
        method="icm-lora", hidden=32, latent=4, steps=20, eval_every=10, val_fraction=0.0
    )
    rec, metrics = train_generator(reg, base, cfg)
    assert metrics["task_vectors"] is True  # the zoo stored seed examples
    gen = Generator.from_registry(reg, rec)
    plain, shown = gen.generate(
        [
            Request("Does the text mention a fish?", seed=1),
            Request(
                "Does the text mention a fish?",
                seed=1,
                fewshot=FewShot.parse([("fish sun", "yes")]),
            ),
        ]
    )
    assert plain.examples == 0 and shown.examples == 1
    assert any(not torch.equal(plain.weights[k], shown.weights[k]) for k in plain.weights)


def test_missing_generator_and_bad_method_are_clear_errors(world: SandboxWorld) -> None:
    reg: Registry = world.registry
    with pytest.raises(InvalidInput, match="unknown method"):
        generate_adapters(reg, [Request("x")], base_model=world.base, method="dreambooth")
    with pytest.raises(GeneratorNotFound, match="loramint generator train"):
        generate_adapters(reg, [Request("x")], base_model="smollm2-135m-instruct", method="sg-lora")
