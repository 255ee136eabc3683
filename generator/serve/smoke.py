"""Serving smoke test: does the adapter, loaded the way a client loads it, change what
the base model says?

The base model (its local HF folder) runs one short probe prompt bare and with the
adapter attached by ``PeftModel.from_pretrained`` from the exported PEFT folder; the
adapter passes when the largest absolute difference of the logits is above a small
tolerance. An adapter whose B matrices are all zero (or whose tensors PEFT cannot
place, so its LoRA stays at PEFT's zero init) fails.

``check_adapter`` is the whole serving check of a registered adapter: the serving
rules of ``registry.serving`` plus this smoke test.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from generator.tasks.evaluation import load_base
from generator.tasks.prompting import PromptFormat
from registry.base_models import MODEL_LOADING
from registry.peft_format import write_adapter
from registry.service import Registry
from registry.serving import TARGETS, ServingCheck, Target, check_registered

PROBE_INPUT = "The quick brown fox jumps over the lazy dog."
DEFAULT_INSTRUCTION = "Answer the question."
DEFAULT_TOLERANCE = 1e-4  # float32 logits of the same model agree far closer than this


@dataclass(frozen=True)
class SmokeResult:
    passed: bool
    max_abs_diff: float | None  # None when PEFT could not attach the adapter
    tolerance: float
    prompt_tokens: int
    message: str


def smoke_test(
    base_path: Path,
    config: dict[str, Any],
    weights: bytes,
    *,
    instruction: str = DEFAULT_INSTRUCTION,
    tolerance: float = DEFAULT_TOLERANCE,
) -> SmokeResult:
    """Run the probe prompt through the base model bare and with the adapter (its
    ``adapter_config.json`` dict and ``adapter_model.safetensors`` bytes) attached."""
    from peft import PeftModel

    model, tokenizer = load_base(base_path)
    ids = PromptFormat.for_tokenizer(tokenizer).prompt_ids(instruction, PROBE_INPUT)
    x = torch.tensor([ids])
    with torch.no_grad():
        bare = model(input_ids=x).logits
    # PEFT's default init leaves B at zero, so tensors PEFT cannot place change nothing
    # (an adapter saved with init_lora_weights=false would otherwise start random)
    loaded_config = {**config, "init_lora_weights": True}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_adapter(Path(tmp) / "adapter", loaded_config, weights)
        try:
            with MODEL_LOADING:
                adapted_model = PeftModel.from_pretrained(model, str(folder))
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return SmokeResult(
                False, None, tolerance, len(ids), f"PEFT could not attach the adapter: {reason}"
            )
        adapted_model.eval()
        with torch.no_grad():
            adapted = adapted_model(input_ids=x).logits
    diff = float((adapted.float() - bare.float()).abs().max())
    if not math.isfinite(diff):
        return SmokeResult(False, None, tolerance, len(ids), "the adapted logits are not finite")
    if diff <= tolerance:
        message = (
            f"the adapter does not change the logits (max |diff| {diff:.3g} <= {tolerance:g}): "
            "its B matrices are zero or its tensors do not reach the model"
        )
        return SmokeResult(False, diff, tolerance, len(ids), message)
    message = f"the adapter changes the logits (max |diff| {diff:.3g} > {tolerance:g})"
    return SmokeResult(True, diff, tolerance, len(ids), message)


@dataclass(frozen=True)
class CheckReport:
    """The serving rules of each target asked for, and the smoke test (None: skipped)."""

    rules: ServingCheck
    smoke: SmokeResult | None

    @property
    def ok(self) -> bool:
        return self.rules.ok and (self.smoke is None or self.smoke.passed)


def check_adapter(
    registry: Registry,
    adapter_id: int,
    targets: Sequence[Target] = TARGETS,
    *,
    smoke: bool = True,
) -> CheckReport:
    """Check a registered adapter against the serving engines' documented limits and,
    with ``smoke``, that it changes its base model's output."""
    rules = check_registered(registry, adapter_id, targets)
    result = None
    if smoke:
        record = registry.get_adapter(adapter_id)
        files = registry.adapter_files(adapter_id)
        result = smoke_test(
            registry.base_model_path(record.base_model),
            files.config,
            files.weights,
            instruction=record.description,
        )
    return CheckReport(rules, result)
