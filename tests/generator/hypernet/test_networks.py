"""The generator networks over rank-one tokens, the update-space geometry and the
checkpoint format (pure torch)."""

from __future__ import annotations

import pytest
import torch

from generator.hypernet.checkpoint import Checkpoint
from generator.hypernet.geometry import delta_inner, delta_relative_error
from generator.hypernet.layout import LoraLayout
from generator.hypernet.networks import ICMLoraNet, NetConfig, SGLoraNet, parameter_count
from generator.hypernet.tokens import module_shapes, rows_to_tokens, tokens_to_rows
from registry.errors import InvalidInput
from tests.generator.synthetic import HIDDEN, LAYERS, RANK, V_OUT, tiny_layout


def test_tokens_round_trip_and_match_rank_one_terms() -> None:
    layout = tiny_layout()
    s = module_shapes(layout)[1]  # v_proj: in 12, out 6
    rows = torch.randn(2, LAYERS, layout.block_size("v_proj"))
    tokens = rows_to_tokens(rows, s)
    assert tokens.shape == (2, LAYERS, RANK, HIDDEN + V_OUT)
    assert torch.equal(tokens_to_rows(tokens, s), rows)
    a = rows[0, 1, : RANK * HIDDEN].reshape(RANK, HIDDEN)
    b = rows[0, 1, RANK * HIDDEN :].reshape(V_OUT, RANK)
    assert torch.equal(tokens[0, 1, 2], torch.cat([a[2], b[:, 2]]))


def test_delta_error_is_the_frobenius_error_of_b_times_a() -> None:
    layout = tiny_layout()
    x = {m: torch.randn(LAYERS, layout.block_size(m)) for m in layout.modules}
    y = {m: torch.randn(LAYERS, layout.block_size(m)) for m in layout.modules}
    full = {}
    for name, rows in (("x", x), ("y", y)):
        state = layout.unflatten(rows)
        full[name] = [(state[b.key_b].double() @ state[b.key_a].double()) for b in layout.blocks]
    err = sum(((p - t) ** 2).sum() for p, t in zip(full["x"], full["y"], strict=True))
    norm = sum((t**2).sum() for t in full["y"])
    assert delta_relative_error(layout, x, y) == pytest.approx(float(err / norm), rel=1e-9)
    assert float(delta_inner(layout, x, x)) == pytest.approx(
        float(sum((t**2).sum() for t in full["x"]))
    )


def test_networks_scale_with_token_width_not_adapter_size() -> None:
    # SmolLM2-135M, r=8, q/v: 460,800 numbers per adapter
    paths, shapes = [], {}
    for i in range(30):
        for m, out in (("q_proj", 576), ("v_proj", 192)):
            paths.append(f"model.layers.{i}.self_attn.{m}")
            shapes[paths[-1]] = [576, out]
    layout = LoraLayout.build(paths, shapes, 8)
    assert layout.numel == 460_800
    sg = SGLoraNet(module_shapes(layout), NetConfig())
    icm = ICMLoraNet(module_shapes(layout), 384 + 576 + 1, NetConfig())
    assert parameter_count(sg) < 3_000_000 and parameter_count(icm) < 3_000_000


def test_untrained_sg_net_returns_the_mixture_mean() -> None:
    layout = tiny_layout()
    net = SGLoraNet(module_shapes(layout), NetConfig(hidden=32, latent=4))
    mean = {s.module: torch.randn(2, s.layers, s.rank, s.width) for s in module_shapes(layout)}
    logvar = {m: torch.zeros_like(v) for m, v in mean.items()}
    out = net.sample(mean, logvar, torch.randn(2, 4))
    assert all(torch.equal(out[m], mean[m]) for m in mean)


def test_bad_checkpoints_and_configs_are_rejected() -> None:
    with pytest.raises(InvalidInput, match="not a loramint generator checkpoint"):
        Checkpoint.from_bytes(b"not a checkpoint at all")
