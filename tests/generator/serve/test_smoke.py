"""The serving smoke test (generator/serve/smoke.py) on the tiny Llama: an adapter with
all-zero B matrices (what PEFT's default init saves) fails it, a trained-looking one
passes, and a registered adapter is checked end to end."""

from __future__ import annotations

from pathlib import Path

import torch

from generator.serve.smoke import check_adapter, smoke_test
from registry.lora_spec import parse_weights, weights_bytes
from registry.peft_format import read_adapter
from registry.service import Registry
from tests.conftest import make_lora


def test_an_adapter_with_zero_b_matrices_fails(tiny_base: Path, tmp_path: Path) -> None:
    files = read_adapter(make_lora(tiny_base, tmp_path / "a"), max_bytes=2**30)
    tensors = parse_weights(files.weights)
    zeroed = {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in tensors.items()}
    result = smoke_test(tiny_base, files.config, weights_bytes(zeroed))
    assert not result.passed and result.max_abs_diff == 0.0
    assert result.prompt_tokens > 0 and "does not change the logits" in result.message


def test_a_normal_adapter_changes_the_logits(tiny_base: Path, tmp_path: Path) -> None:
    files = read_adapter(make_lora(tiny_base, tmp_path / "a"), max_bytes=2**30)
    result = smoke_test(tiny_base, files.config, files.weights)
    assert result.passed, result.message
    assert result.max_abs_diff is not None and result.max_abs_diff > result.tolerance


def test_tensors_peft_cannot_place_fail(tiny_base: Path, tmp_path: Path) -> None:
    """Keys without PEFT's prefix never reach the model: the LoRA stays at zero, even
    though the config asks for a random init."""
    files = read_adapter(make_lora(tiny_base, tmp_path / "a"), max_bytes=2**30)
    assert files.config["init_lora_weights"] is False
    tensors = parse_weights(files.weights)
    stripped = {k.removeprefix("base_model.model."): v for k, v in tensors.items()}
    result = smoke_test(tiny_base, files.config, weights_bytes(stripped))
    assert not result.passed


def test_check_adapter_runs_rules_and_smoke(
    registry: Registry, tiny_base: Path, tmp_path: Path
) -> None:
    folder = make_lora(tiny_base, tmp_path / "a", r=8)
    rec = registry.add_adapter(folder, base_model=str(tiny_base), description="Say yes or no.")
    report = check_adapter(registry, rec.id)
    assert report.ok and report.smoke is not None and report.smoke.passed
    assert report.rules.ok and len(report.rules.targets) == 3
    skipped = check_adapter(registry, rec.id, ("vllm",), smoke=False)
    assert skipped.smoke is None and [t.target for t in skipped.rules.targets] == ["vllm"]
