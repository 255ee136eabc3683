"""SG-LoRA and ICM-LoRA trained on a synthetic expert bank whose unseen tasks'
adapters are known (``tests.generator.synthetic``), then served (pure torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from generator.adapt.examples import FewShot
from generator.experts import ExpertBank
from generator.fit.config import GeneratorConfig
from generator.fit.icm import fit_icm
from generator.fit.sg import choose_k_tau, fit_sg
from generator.hypernet.checkpoint import Checkpoint
from generator.hypernet.geometry import delta_relative_error
from generator.serve.generator import Generator, Request
from registry.errors import InvalidInput
from tests.generator.synthetic import EMB, Truth, synthetic_bank


class TrainedSG(NamedTuple):
    bank: ExpertBank
    checkpoint: Checkpoint
    truth: Truth
    metrics: dict[str, Any]


def test_k_tau_selection_prefers_informative_neighbours() -> None:
    bank, _, _ = synthetic_bank(16)
    k, tau, grid = choose_k_tau(bank, ks=(1, 4, 15), taus=(0.05, 10.0))
    assert grid["k=15,tau=10.0"] > min(grid.values())  # the plain mean of all is not best
    assert (k, tau) != (15, 10.0)


@pytest.fixture(scope="module")
def trained_sg() -> TrainedSG:
    bank, _, truth = synthetic_bank(24)
    cfg = GeneratorConfig(hidden=64, latent=8, steps=300, batch_size=8, eval_every=50, seed=0)
    result = fit_sg(bank, cfg)
    return TrainedSG(bank, result.checkpoint, truth, result.metrics)


def test_sg_generates_unseen_tasks_better_than_the_expert_mean(trained_sg: TrainedSG) -> None:
    bank, ckpt, truth, metrics = trained_sg
    assert metrics["val_experts"] >= 3 and metrics["k"] >= 1
    # a round trip through bytes gives the same network
    ckpt2 = Checkpoint.from_bytes(ckpt.to_bytes())
    experts = {e.id: e for e in bank.experts}
    queries: dict[str, np.ndarray] = {}

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.stack([queries[t] for t in texts])

    gen = Generator(ckpt2, embed=embed, experts=experts.get)
    global_mean = {
        m: torch.stack([e.mean[m] for e in bank.experts]).mean(0) for m in bank.layout.modules
    }
    better = 0
    for i in range(8):
        e = truth.embedding(i % 4)
        queries[f"new {i}"] = e.numpy()
        true = truth.adapter_for(e)
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


def test_sg_skips_deleted_experts(trained_sg: TrainedSG) -> None:
    bank, ckpt, truth, _ = trained_sg
    alive = {e.id: e for e in bank.experts[: len(bank) // 2]}
    e = truth.embedding(1)
    gen = Generator(ckpt, embed=lambda t: np.stack([e.numpy()]), experts=alive.get)
    out = gen.generate([Request("x")])[0]
    assert out.neighbours and all(n.adapter_id in alive for n in out.neighbours)


def test_icm_learns_from_description_and_optional_task_vector() -> None:
    bank, embs, truth = synthetic_bank(24, seed=1)
    vectors = [embs[i] * 3 for i in range(len(bank))]  # a stand-in task vector per expert
    cfg = GeneratorConfig(method="icm-lora", hidden=64, latent=8, steps=300, eval_every=50, seed=0)
    result = fit_icm(bank, cfg, vectors, hidden_size=EMB)
    assert result.metrics["task_vectors"] is True
    ckpt = Checkpoint.from_bytes(result.checkpoint.to_bytes())
    e = truth.embedding(2)
    gen = Generator(ckpt, embed=lambda t: np.stack([e.numpy()] * len(t)))
    out = gen.generate([Request("x", seed=3)])[0]
    true = truth.adapter_for(e)
    mean = {m: torch.stack([x.mean[m] for x in bank.experts]).mean(0) for m in bank.layout.modules}
    err = delta_relative_error(bank.layout, bank.layout.flatten(out.weights), true)
    assert err < delta_relative_error(bank.layout, mean, true)
    with pytest.raises(InvalidInput, match="cannot read examples"):
        gen.generate([Request("x", fewshot=FewShot.parse([("a", "b")]))])


def test_a_checkpoint_of_an_older_format_is_refused_with_retrain_it(trained_sg: TrainedSG) -> None:
    """Format 1 carried options that lost their experiments (the local policy, the
    anchor, ...); this version cannot serve them, and says what to do in one line."""
    import json

    from safetensors.torch import load, save

    ckpt = trained_sg.checkpoint
    raw = ckpt.to_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["loramint"])
    old = save(load(raw), metadata={"format": "pt", "loramint": json.dumps(meta | {"format": 1})})
    with pytest.raises(InvalidInput, match="format 1 is no longer supported.*retrain it") as err:
        Checkpoint.from_bytes(old)
    assert "\n" not in str(err.value)


def test_bad_configs_are_rejected() -> None:
    with pytest.raises(InvalidInput, match="method must be one of"):
        GeneratorConfig(method="magic")
    with pytest.raises(InvalidInput, match="steps"):
        GeneratorConfig(steps=0)
