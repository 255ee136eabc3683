"""LoRA layout: flatten/unflatten is exact and block order follows the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generator.hypernet.layout import Block, BlockNormaliser, LoraLayout
from registry import base_models, lora_spec
from tests.conftest import make_lora


@pytest.fixture(scope="module")
def adapter(
    tiny_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LoraLayout, dict[str, torch.Tensor]]:
    out = make_lora(
        tiny_base, tmp_path_factory.mktemp("a") / "a", r=4, targets=["q_proj", "v_proj"]
    )
    shapes = base_models.describe(tiny_base).linear_shapes
    spec = lora_spec.spec_from_config(json.loads((out / "adapter_config.json").read_text()))
    layout = LoraLayout.build(spec.targeted_modules(shapes), shapes, spec.rank)
    return layout, load_file(out / "adapter_model.safetensors")


def test_blocks_follow_model_order(adapter: tuple[LoraLayout, dict[str, torch.Tensor]]) -> None:
    layout, state = adapter
    assert layout.modules == ("q_proj", "v_proj") and layout.num_layers == 2
    assert [(b.layer, b.module) for b in layout.blocks] == [
        (0, "q_proj"),
        (0, "v_proj"),
        (1, "q_proj"),
        (1, "v_proj"),
    ]
    assert (
        layout.block_size("q_proj") == 4 * 32 + 32 * 4
        and layout.block_size("v_proj") == 4 * 32 + 16 * 4
    )
    assert layout.numel == sum(v.numel() for v in state.values())


def test_flatten_unflatten_is_exact(adapter: tuple[LoraLayout, dict[str, torch.Tensor]]) -> None:
    layout, state = adapter
    rows = layout.flatten(state)
    assert rows["q_proj"].shape == (2, layout.block_size("q_proj"))
    back = layout.unflatten(rows)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="expected rows of shape"):
        layout.unflatten({"q_proj": rows["q_proj"][:1], "v_proj": rows["v_proj"]})


def test_unflatten_gives_contiguous_tensors_for_any_rows(
    adapter: tuple[LoraLayout, dict[str, torch.Tensor]],
) -> None:
    """Rows that are not contiguous, and a module whose blocks share a size but not their
    shapes, unflatten to each block's own contiguous tensors."""
    layout, state = adapter
    strided = {m: r.T.contiguous().T for m, r in layout.flatten(state).items()}
    assert not strided["q_proj"].is_contiguous()
    back = layout.unflatten(strided)
    assert all(torch.equal(back[k], state[k]) and back[k].is_contiguous() for k in state)
    # 4 x 32 + 32 x 4 = 4 x 16 + 48 x 4 = 256 numbers a block
    mixed = LoraLayout((Block(0, "q", "m.0.q", 4, 32, 32), Block(1, "q", "m.1.q", 4, 16, 48)))
    flat = torch.arange(512, dtype=torch.float32)
    out = mixed.unflatten({"q": flat.view(2, 256)})
    a0, b0, a1, b1 = (
        out[f"base_model.model.m.{i}.q.lora_{h}.weight"] for i in (0, 1) for h in "AB"
    )
    assert torch.equal(a0, flat[:128].view(4, 32)) and torch.equal(b0, flat[128:256].view(32, 4))
    assert torch.equal(a1, flat[256:320].view(4, 16)) and torch.equal(b1, flat[320:].view(48, 4))


def test_normaliser_round_trip_and_statistics(
    adapter: tuple[LoraLayout, dict[str, torch.Tensor]],
) -> None:
    layout, state = adapter
    g = torch.Generator().manual_seed(0)
    samples = [
        {m: r + 0.1 * torch.randn(r.shape, generator=g) for m, r in layout.flatten(state).items()}
        for _ in range(8)
    ]
    norm = BlockNormaliser.fit(layout, samples)
    z = norm.normalise(layout, samples[0])
    back = norm.denormalise(layout, z)
    assert all(torch.allclose(back[m], samples[0][m], atol=1e-6) for m in layout.modules)
    stacked = torch.stack([norm.normalise(layout, s)["q_proj"] for s in samples])  # (N, L, d)
    assert stacked.mean(0).abs().max() < 1e-5  # centred per block
    assert torch.allclose(stacked.pow(2).mean(dim=(0, 2)), torch.ones(2), atol=1e-4)  # unit scale
    again = BlockNormaliser.from_state_dict(norm.state_dict())
    assert all(torch.equal(again.std[m], norm.std[m]) for m in layout.modules)
    with pytest.raises(ValueError, match="at least one sample"):
        BlockNormaliser.fit(layout, [])
