"""Serving checks (registry/serving.py): each engine rule catches a real violating
adapter (made with PEFT on the tiny Llama, then altered where PEFT itself would not
write it), a clean adapter passes every target, and a registered adapter is checked
from what the registry stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from registry import base_models, serving
from registry.errors import InvalidInput
from registry.lora_spec import Tensors
from registry.peft_format import read_adapter
from registry.service import Registry
from registry.serving import Finding, TargetCheck, check_serving
from tests.conftest import make_lora


@pytest.fixture(scope="module")
def llama(tiny_base: Path) -> base_models.ModelShapes:
    return base_models.describe(tiny_base)


def load(folder: Path) -> tuple[dict[str, Any], Tensors]:
    return read_adapter(folder, max_bytes=2**30).parsed()


def run(
    config: dict[str, Any], weights: Tensors, shapes: base_models.ModelShapes, **kw: Any
) -> dict[str, TargetCheck]:
    kw.setdefault("architecture", shapes.architecture)
    checks = check_serving(config, weights, linear_shapes=shapes.linear_shapes, **kw)
    return {c.target: c for c in checks}


def rules(check: TargetCheck, severity: str = "error") -> set[str]:
    return {f.rule for f in check.findings if f.severity == severity}


def test_a_clean_adapter_passes_every_target(
    tiny_base: Path, tmp_path: Path, llama: base_models.ModelShapes
) -> None:
    assert llama.architecture == "LlamaForCausalLM"
    config, weights = load(make_lora(tiny_base, tmp_path / "a", r=8))
    checks = run(config, weights, llama)
    assert set(checks) == {"peft", "vllm", "lorax"}
    for check in checks.values():
        assert check.findings == [] and check.ok, check.findings
    assert checks["vllm"].settings == {"max_lora_rank": 8}


def test_rank_outside_vllms_max_lora_rank_set(
    tiny_base: Path, tmp_path: Path, llama: base_models.ModelShapes
) -> None:
    assert serving.vllm_max_lora_rank(4) == 8 and serving.vllm_max_lora_rank(12) == 16
    assert serving.vllm_max_lora_rank(300) == 320 and serving.vllm_max_lora_rank(513) is None
    # a real rank-640 adapter (the tiny model's layers are 64 wide: PEFT allows it)
    config, weights = load(make_lora(tiny_base, tmp_path / "big", r=640, targets=("q_proj",)))
    checks = run(config, weights, llama)
    [finding] = [f for f in checks["vllm"].findings if f.rule == "vllm.rank"]
    assert finding.severity == "error" and "r=640" in finding.message and "512" in finding.message
    assert checks["vllm"].settings == {"max_lora_rank": None} and not checks["vllm"].ok
    assert rules(checks["lorax"], "warning") == {"lorax.rank"} and checks["lorax"].ok
    assert checks["peft"].ok
    # above vLLM's default of 16 but in its set: a warning naming the setting
    config, weights = load(make_lora(tiny_base, tmp_path / "r24", r=24))
    vllm = run(config, weights, llama, targets=("vllm",))["vllm"]
    assert vllm.ok and vllm.settings == {"max_lora_rank": 32}
    assert "--max-lora-rank 32" in vllm.findings[0].message


def test_an_unsupported_module_is_caught(
    tiny_base: Path, tmp_path: Path, llama: base_models.ModelShapes
) -> None:
    config, saved = load(make_lora(tiny_base, tmp_path / "a", targets=("q_proj", "lm_head")))
    # PEFT also saves the full embedding weights next to an lm_head LoRA: vLLM refuses them
    full = sorted(k for k in saved if not k.endswith(("lora_A.weight", "lora_B.weight")))
    assert full and "vllm.tensor-suffix" in rules(run(config, saved, llama)["vllm"])
    weights = {k: v for k, v in saved.items() if k not in full}
    assert run(config, weights, llama)["vllm"].ok  # vLLM's Llama serves lm_head LoRA
    # vLLM's Gemma 3 has no lm_head LoRA; LoRAX documents no Gemma 3 targets at all
    gemma = run(config, weights, llama, architecture="Gemma3ForCausalLM")
    [finding] = gemma["vllm"].findings
    assert finding.rule == "vllm.modules" and "lm_head" in finding.message
    assert rules(gemma["lorax"]) == {"lorax.modules"}
    # a module name outside the table, on a crafted config (the rule reads the config too)
    crafted = {**config, "target_modules": ["q_proj", "wqkv"]}
    [finding] = serving.module_rules("lorax", "LlamaForCausalLM", crafted, {})
    assert finding.severity == "error" and "wqkv" in finding.message
    [unknown] = serving.module_rules("vllm", "FalconForCausalLM", config, {})
    assert unknown.severity == "warning"


def test_modules_to_save_is_caught(
    tiny_base: Path, tmp_path: Path, llama: base_models.ModelShapes
) -> None:
    # PEFT writes the saved module's full weight beside the LoRA tensors
    folder = make_lora(tiny_base, tmp_path / "a", modules_to_save=["lm_head"])
    config, weights = load(folder)
    assert config["modules_to_save"] == ["lm_head"]
    checks = run(config, weights, llama)
    assert "vllm.modules_to_save" in rules(checks["vllm"])
    assert "lorax.modules_to_save" in rules(checks["lorax"])
    assert not checks["peft"].ok  # the registry refuses it at upload


def test_dora_is_caught(tiny_base: Path, tmp_path: Path, llama: base_models.ModelShapes) -> None:
    config, weights = load(make_lora(tiny_base, tmp_path / "a", use_dora=True))
    assert any("lora_magnitude_vector" in k for k in weights)
    checks = run(config, weights, llama)
    assert {"vllm.dora", "vllm.tensor-suffix"} <= rules(checks["vllm"])
    assert "lorax.dora" in rules(checks["lorax"])
    [finding] = checks["peft"].findings
    assert "use_dora" in finding.message
    # the rule alone, on a config dict
    [dora] = serving.feature_rules("vllm", {"r": 8, "use_dora": True})
    assert dora.rule == "vllm.dora" and "use_dora" in dora.message


def test_a_lora_bias_is_caught(
    tiny_base: Path, tmp_path: Path, llama: base_models.ModelShapes
) -> None:
    config, weights = load(make_lora(tiny_base, tmp_path / "a", bias="lora_only"))
    checks = run(config, weights, llama)
    assert "vllm.bias" in rules(checks["vllm"]) and "lorax.bias" in rules(checks["lorax"])


def test_a_mismatched_tensor_prefix_is_caught(
    tiny_base: Path, tmp_path: Path, llama: base_models.ModelShapes
) -> None:
    config, weights = load(make_lora(tiny_base, tmp_path / "a"))
    stripped = {k.removeprefix("base_model.model."): v for k, v in weights.items()}
    checks = run(config, stripped, llama)
    for target in ("vllm", "lorax"):
        [finding] = checks[target].findings
        assert finding.rule == f"{target}.tensor-prefix" and "base_model.model." in finding.message
    assert "unexpected tensor" in checks["peft"].findings[0].message
    # the prefix is right but the module path is not the base model's
    moved = {k.replace(".layers.", ".blocks."): v for k, v in weights.items()}
    checks = run(config, moved, llama)
    assert rules(checks["vllm"]) == {"vllm.tensor-module"} and not checks["peft"].ok


def test_lorax_drops_a_module_type_missing_from_some_layers(
    tiny_base: Path, tmp_path: Path, llama: base_models.ModelShapes
) -> None:
    config, weights = load(make_lora(tiny_base, tmp_path / "a", layers_to_transform=[0]))
    checks = run(config, weights, llama)
    assert checks["peft"].ok and checks["vllm"].ok
    [finding] = checks["lorax"].findings
    assert finding.rule == "lorax.layers" and "q_proj" in finding.message


def test_patterns_change_the_scaling_engines_use(
    tiny_base: Path, tmp_path: Path, llama: base_models.ModelShapes
) -> None:
    folder = make_lora(tiny_base, tmp_path / "a", r=8, rank_pattern={"v_proj": 4})
    config, weights = load(folder)
    checks = run(config, weights, llama)
    assert checks["peft"].ok
    assert "vllm.patterns" in rules(checks["vllm"])
    assert {"lorax.patterns"} <= rules(checks["lorax"])


def test_targets_parse_with_a_clear_error() -> None:
    assert serving.parse_targets("all") == ("peft", "vllm", "lorax")
    assert serving.parse_targets("VLLM") == ("vllm",)
    with pytest.raises(InvalidInput, match="unknown target 'tgi': choose peft, vllm, lorax"):
        serving.parse_targets("tgi")


def test_a_registered_adapter_is_checked_from_the_registry(
    registry: Registry, tiny_base: Path, tmp_path: Path
) -> None:
    folder = make_lora(tiny_base, tmp_path / "a", r=8)
    rec = registry.add_adapter(folder, base_model=str(tiny_base), description="A clean adapter.")
    report = serving.check_registered(registry, rec.id)
    assert report.ok and report.architecture == "LlamaForCausalLM"
    assert [t.target for t in report.targets] == ["peft", "vllm", "lorax"]
    assert all(t.findings == [] for t in report.targets)
    only = serving.check_registered(registry, rec.id, ("lorax",))
    assert [t.target for t in only.targets] == ["lorax"]


def test_findings_are_one_line() -> None:
    weights = {"x.lora_A.weight": torch.zeros(2, 3), "base_model.model.a.bias": torch.zeros(3)}
    config = {"r": 2048, "use_dora": True, "modules_to_save": ["x"], "bias": "all"}
    found: list[Finding] = []
    for target in ("vllm", "lorax"):
        found += serving.check_engine(
            target, config, serving.tensor_shapes(weights), architecture="LlamaForCausalLM"
        ).findings
    assert len(found) >= 10
    assert all("\n" not in f.message and f.severity in ("error", "warning") for f in found)
