"""A synthetic expert bank with a known structure: every adapter shares one A (as
the zoo's do) and its B is a smooth function of the task's description
embedding, so an unseen task's adapter is predictable from its description.
Generators must get closer to it than the mean of all experts does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import torch

from generator.experts import Expert, ExpertBank
from generator.hypernet.layout import LoraLayout
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


@dataclass(frozen=True)
class Truth:
    """What the synthetic tasks really are: a new task's embedding (by family) and the
    adapter that solves it."""

    adapter_for: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    embedding: Callable[[int], torch.Tensor]


def synthetic_bank(n: int, seed: int = 0) -> tuple[ExpertBank, torch.Tensor, Truth]:
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
    return bank, torch.stack(embs), Truth(adapter_for, embedding)
