"""Generator networks and their training on a synthetic expert bank (pure torch).

The synthetic tasks have a known structure: every adapter shares one A (as the
zoo's do) and its B is a smooth function of the task's description embedding,
so an unseen task's adapter is predictable from its description. Generators
must get closer to it than the mean of all experts does.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import torch

from generator.experts import Expert, ExpertBank
from generator.fit.config import GeneratorConfig
from generator.fit.icm import fit_icm
from generator.fit.sg import choose_k_tau, fit_sg
from generator.hypernet.checkpoint import Checkpoint
from generator.hypernet.geometry import delta_inner, delta_relative_error
from generator.hypernet.layout import LoraLayout
from generator.hypernet.networks import ICMLoraNet, NetConfig, SGLoraNet, parameter_count
from generator.hypernet.tokens import module_shapes, rows_to_tokens, tokens_to_rows
from generator.serve.generator import Generator, Request, check_examples
from registry.errors import InvalidInput
from registry.records import AdapterRecord

LAYERS, RANK, HIDDEN, V_OUT, EMB = 3, 4, 12, 6, 16


def tiny_layout() -> LoraLayout:
    paths, shapes = [], {}
    for i in range(LAYERS):
        for m, out in (("q_proj", HIDDEN), ("v_proj", V_OUT)):
            p = f"model.layers.{i}.self_attn.{m}"
            paths.append(p)
            shapes[p] = [HIDDEN, out]
    return LoraLayout.build(paths, shapes, RANK)


def record(i: int, description: str) -> AdapterRecord:
    return AdapterRecord(
        id=i + 1,
        name=f"task-{i}",
        description=description,
        base_model="tiny",
        peft_type="LORA",
        rank=RANK,
        alpha=2 * RANK,
        target_modules=["q_proj", "v_proj"],
        layout_signature="x",
        provenance="trained",
        sha256="0" * 64,
        size_bytes=0,
        created_at=datetime.now(UTC),
        config={"r": RANK, "lora_alpha": 2 * RANK, "target_modules": ["q_proj", "v_proj"]},
    )


def synthetic_bank(n: int, seed: int = 0) -> tuple[ExpertBank, torch.Tensor, dict]:
    """n experts whose B is a fixed linear function of their unit embedding."""
    g = torch.Generator().manual_seed(seed)
    layout = tiny_layout()
    shared_a = {m: torch.randn(LAYERS, RANK * HIDDEN, generator=g) * 0.1 for m in layout.modules}
    maps = {
        m: torch.randn(EMB, LAYERS * layout.of(m)[0].fan_out * RANK, generator=g)
        for m in layout.modules
    }
    centres = torch.nn.functional.normalize(torch.randn(4, EMB, generator=g), dim=-1)

    def adapter_for(e: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = {}
        for m in layout.modules:
            b = (e @ maps[m]).reshape(LAYERS, -1) * 0.05
            rows[m] = torch.cat([shared_a[m], b], dim=1)
        return rows

    def embedding(family: int) -> torch.Tensor:
        return torch.nn.functional.normalize(
            centres[family] + 0.35 * torch.randn(EMB, generator=g), dim=-1
        )

    experts, embs = [], []
    for i in range(n):
        e = embedding(i % 4)
        mean = adapter_for(e)
        snaps = [
            {m: v + 0.002 * torch.randn(v.shape, generator=g) for m, v in mean.items()}
            for _ in range(3)
        ]
        var = {m: torch.full_like(v, 0.002**2) for m, v in mean.items()}
        experts.append(Expert(record(i, f"task {i}"), mean, mean, var, snaps, []))
        embs.append(e)
    bank = ExpertBank("tiny", layout, experts[0].record.config, experts, torch.stack(embs))
    return bank, torch.stack(embs), {"adapter_for": adapter_for, "embedding": embedding}


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


def test_k_tau_selection_prefers_informative_neighbours() -> None:
    bank, _, _ = synthetic_bank(16)
    k, tau, grid = choose_k_tau(bank, ks=(1, 4, 15), taus=(0.05, 10.0))
    assert grid["k=15,tau=10.0"] > min(grid.values())  # the plain mean of all is not best
    assert (k, tau) != (15, 10.0)


@pytest.fixture(scope="module")
def trained_sg() -> tuple[ExpertBank, Checkpoint, dict]:
    bank, _, world = synthetic_bank(24)
    cfg = GeneratorConfig(hidden=64, latent=8, steps=300, batch_size=8, eval_every=50, seed=0)
    result = fit_sg(bank, cfg)
    return bank, result.checkpoint, world | {"metrics": result.metrics}


def test_sg_generates_unseen_tasks_better_than_the_expert_mean(trained_sg) -> None:  # type: ignore[no-untyped-def]
    bank, ckpt, world = trained_sg
    metrics = world["metrics"]
    assert metrics["val_experts"] >= 3 and metrics["k"] >= 1
    # a round trip through bytes gives the same network
    ckpt2 = Checkpoint.from_bytes(ckpt.to_bytes())
    experts = {e.id: e for e in bank.experts}
    queries: dict[str, np.ndarray] = {}

    def embed(texts):  # type: ignore[no-untyped-def]
        return np.stack([queries[t] for t in texts])

    gen = Generator(ckpt2, embed=embed, experts=experts.get)
    global_mean = {
        m: torch.stack([e.mean[m] for e in bank.experts]).mean(0) for m in bank.layout.modules
    }
    better = 0
    for i in range(8):
        e = world["embedding"](i % 4)
        queries[f"new {i}"] = e.numpy()
        true = world["adapter_for"](e)
        out = gen.generate([Request(f"new {i}", seed=i)])[0]
        rows = bank.layout.flatten(out.weights)
        assert len(out.neighbours) == ckpt.hyper["k"]
        assert sum(n.weight for n in out.neighbours) == pytest.approx(1.0, abs=1e-4)
        better += delta_relative_error(bank.layout, rows, true) < delta_relative_error(
            bank.layout, global_mean, true
        )
    assert better >= 7
    # same seed, same adapter; another seed, another sample
    a = gen.generate([Request("new 0", seed=1)])[0].weights
    b = gen.generate([Request("new 0", seed=1), Request("new 1", seed=2)])[0].weights
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_sg_skips_deleted_experts(trained_sg) -> None:  # type: ignore[no-untyped-def]
    bank, ckpt, world = trained_sg
    alive = {e.id: e for e in bank.experts[: len(bank) // 2]}
    e = world["embedding"](1)
    gen = Generator(ckpt, embed=lambda t: np.stack([e.numpy()]), experts=alive.get)
    out = gen.generate([Request("x")])[0]
    assert out.neighbours and all(n.adapter_id in alive for n in out.neighbours)


def test_icm_learns_from_description_and_optional_task_vector() -> None:
    bank, embs, world = synthetic_bank(24, seed=1)
    vectors = [embs[i] * 3 for i in range(len(bank))]  # a stand-in task vector per expert
    cfg = GeneratorConfig(method="icm-lora", hidden=64, latent=8, steps=300, eval_every=50, seed=0)
    result = fit_icm(bank, cfg, vectors, hidden_size=EMB)
    assert result.metrics["task_vectors"] is True
    ckpt = Checkpoint.from_bytes(result.checkpoint.to_bytes())
    e = world["embedding"](2)
    gen = Generator(ckpt, embed=lambda t: np.stack([e.numpy()] * len(t)))
    out = gen.generate([Request("x", seed=3)])[0]
    true = world["adapter_for"](e)
    mean = {m: torch.stack([x.mean[m] for x in bank.experts]).mean(0) for m in bank.layout.modules}
    err = delta_relative_error(bank.layout, bank.layout.flatten(out.weights), true)
    assert err < delta_relative_error(bank.layout, mean, true)
    with pytest.raises(InvalidInput, match="cannot read examples"):
        gen.generate([Request("x", examples=(("a", "b"),))])


def test_a_checkpoint_of_an_older_format_is_refused_with_retrain_it(trained_sg) -> None:  # type: ignore[no-untyped-def]
    """Format 1 carried options that lost their experiments (the local policy, the
    anchor, ...); this version cannot serve them, and says what to do in one line."""
    import json

    from safetensors.torch import load, save

    _, ckpt, _ = trained_sg
    raw = ckpt.to_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["loramint"])
    old = save(load(raw), metadata={"format": "pt", "loramint": json.dumps(meta | {"format": 1})})
    with pytest.raises(InvalidInput, match="format 1 is no longer supported.*retrain it") as err:
        Checkpoint.from_bytes(old)
    assert "\n" not in str(err.value)


def test_bad_checkpoints_and_configs_are_rejected() -> None:
    with pytest.raises(InvalidInput, match="not a loramint generator checkpoint"):
        Checkpoint.from_bytes(b"not a checkpoint at all")
    with pytest.raises(InvalidInput, match="method must be one of"):
        GeneratorConfig(method="magic")
    with pytest.raises(InvalidInput, match="steps"):
        GeneratorConfig(steps=0)
    with pytest.raises(InvalidInput, match="example 0"):
        check_examples([{"input": "x"}])
    assert check_examples([("a", "b"), {"input": "c", "output": "d"}]) == (("a", "b"), ("c", "d"))
