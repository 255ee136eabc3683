"""Experts: the registered adapters a generator learns from and mixes.

An expert is a trained (or imported) adapter of one base model and one LoRA
layout, with its description embedding and, where the zoo stored one, its
late-trajectory mean, variance and snapshots. An adapter without a
trajectory counts as one snapshot with zero variance. Adapters marked
``held_out`` in their metadata are never experts: no generator may learn
from, or mix, a held-out task.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from generator.hypernet.layout import LoraLayout, Rows
from generator.hypernet.mixture import Mixture, experts_needed, guided_mixture, mix, softmax_weights
from generator.tasks.task import Task
from generator.zoo.artifacts import SEEDS, TRAJECTORY, load_trajectory
from registry.errors import InvalidInput
from registry.lora_spec import Tensors, parse_weights, spec_from_config
from registry.records import AdapterRecord
from registry.service import Registry

EXPERT_PROVENANCE = ("trained", "imported")


@dataclass
class Expert:
    record: AdapterRecord
    weights: Rows  # the registered (final) adapter
    mean: Rows  # late-trajectory mean mu_e
    var: Rows  # late-trajectory variance sigma_e^2
    snapshots: list[Rows]
    seeds: list[dict[str, str]]  # a few (input, output) examples, if stored

    @property
    def id(self) -> int:
        return self.record.id


def layout_for(registry: Registry, record: AdapterRecord) -> LoraLayout:
    shapes = registry.linear_shapes(record.base_model)
    spec = spec_from_config(record.config)
    return LoraLayout.build(spec.targeted_modules(shapes), shapes, spec.rank)


def peft_template(record: AdapterRecord) -> dict[str, Any]:
    """The adapter_config.json a generated adapter of this layout carries."""
    config = {
        k: v for k, v in record.config.items() if k not in ("revision", "base_model_name_or_path")
    }
    config.update(base_model_name_or_path=record.base_model, inference_mode=True)
    return config


def candidate_records(registry: Registry, base_model: str) -> list[AdapterRecord]:
    """Every adapter of ``base_model`` that may be an expert (not held out, not generated,
    not a baseline such as the multi-task LoRA)."""
    out: list[AdapterRecord] = []
    for provenance in EXPERT_PROVENANCE:
        offset = 0
        while True:
            page = registry.list_adapters(
                base_model=base_model, provenance=provenance, limit=500, offset=offset
            )
            out += [r for r in page if not r.meta.get("held_out") and not r.meta.get("baseline")]
            if len(page) < 500:
                break
            offset += 500
    out.sort(key=lambda r: r.id)
    return out


def load_expert(registry: Registry, record: AdapterRecord, layout: LoraLayout) -> Expert:
    weights = layout.flatten(parse_weights(registry.adapter_files(record.id).weights))
    names = registry.artifact_names(record.id)
    if TRAJECTORY in names:
        traj = load_trajectory(registry.artifact(record.id, TRAJECTORY))
        mean = layout.flatten(traj.mean)
        var = layout.flatten(traj.var)
        snaps = [layout.flatten(s) for s in traj.snapshots] or [mean]
    else:
        mean, var, snaps = weights, {m: torch.zeros_like(v) for m, v in weights.items()}, [weights]
    seeds = []
    if SEEDS in names:
        for line in registry.artifact(record.id, SEEDS).decode().splitlines():
            if line.strip():
                seeds.append(json.loads(line))
    return Expert(record, weights, mean, var, snaps, seeds)


def wordings_of(record: AdapterRecord) -> list[str]:
    """The descriptions of an expert's task: its own, then the paraphrases the zoo kept
    (``meta["paraphrases"]``, suite v2's), each once."""
    out = [record.description]
    kept = record.meta.get("paraphrases")
    if isinstance(kept, list):
        out += [p for p in kept if isinstance(p, str) and p.strip() and p not in out]
    return out


class ExpertBank:
    """Experts of one base model and layout, with their description embeddings.

    An expert whose task has several wordings is keyed by the normalised mean of their
    embeddings (``embeddings``: where retrieval looks), and keeps each wording's
    (``wordings``) for generators that train on every wording."""

    def __init__(
        self,
        base_model: str,
        layout: LoraLayout,
        template: dict[str, Any],
        experts: list[Expert],
        embeddings: torch.Tensor,  # (E, D), unit norm
        wordings: list[torch.Tensor] | None = None,  # per expert (P, D), unit norm
    ) -> None:
        if not experts:
            raise InvalidInput(f"no expert adapters for base model {base_model}")
        self.base_model, self.layout, self.template = base_model, layout, template
        self.experts, self.embeddings = experts, embeddings
        self.wordings = wordings or [embeddings[i : i + 1] for i in range(len(experts))]

    @classmethod
    def from_registry(
        cls,
        registry: Registry,
        base_model: str,
        *,
        ids: Sequence[int] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> ExpertBank:
        """Load the experts (all eligible ones, or exactly ``ids``) of ``base_model``."""
        records = candidate_records(registry, base_model)
        if ids is not None:
            wanted = set(ids)
            records = [r for r in records if r.id in wanted]
            missing = wanted - {r.id for r in records}
            if missing:
                raise InvalidInput(f"adapters {sorted(missing)} are not eligible experts")
        if not records:
            raise InvalidInput(
                f"base model {base_model} has no trained or imported adapters that are not "
                "held out: build a zoo first (`loramint zoo build`)"
            )
        # one layout per generator: the most common one among the candidates
        signature = Counter(r.layout_signature for r in records).most_common(1)[0][0]
        records = [r for r in records if r.layout_signature == signature]
        layout = layout_for(registry, records[0])
        experts = []
        for i, rec in enumerate(records):
            experts.append(load_expert(registry, rec, layout))
            if on_progress:
                on_progress(i + 1, len(records))
        texts = [wordings_of(r) for r in records]
        vectors = registry.embedder.encode([t for ts in texts for t in ts])
        flat = torch.nn.functional.normalize(torch.as_tensor(vectors).float(), dim=-1)
        wordings = list(torch.split(flat, [len(ts) for ts in texts]))
        # one wording: its own vector, bit for bit; several: their mean, normalised
        normalize = torch.nn.functional.normalize
        emb = torch.stack([w[0] if len(w) == 1 else normalize(w.mean(0), dim=-1) for w in wordings])
        return cls(base_model, layout, peft_template(records[0]), experts, emb, wordings)

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.experts]

    def __len__(self) -> int:
        return len(self.experts)

    def tasks_of(self, suite_tasks: Sequence[Task]) -> dict[int, Task]:
        """Expert index -> its classification task among ``suite_tasks``, matched by the
        task name the zoo stored in the adapter's meta; held-out tasks never match."""
        by_name = {t.name: t for t in suite_tasks if t.is_classification and not t.held_out}
        out = {}
        for i, e in enumerate(self.experts):
            task = by_name.get(str(e.record.meta.get("task", "")))
            if task is not None and task.train:
                out[i] = task
        return out

    def nearest(
        self, query: torch.Tensor, k: int, *, exclude: int | None = None
    ) -> tuple[list[int], torch.Tensor]:
        """Indices of the top-``k`` experts by cosine (skipping index ``exclude``), and sims."""
        sims = self.embeddings @ torch.nn.functional.normalize(query.float(), dim=-1)  # (E,)
        if exclude is not None:
            sims = sims.clone()
            sims[exclude] = -float("inf")
        k = min(k, len(self) - (exclude is not None))
        top = torch.topk(sims, k)
        return top.indices.tolist(), top.values

    def mixture(self, indices: Sequence[int], sims: torch.Tensor, tau: float) -> Mixture:
        w = softmax_weights(sims, tau)
        return mix(
            w, [self.experts[i].mean for i in indices], [self.experts[i].var for i in indices]
        )

    def guided(
        self,
        query: torch.Tensor,
        k: int,
        tau: float,
        gate: float | None = None,
        *,
        exclude: int | None = None,
    ) -> tuple[list[int], torch.Tensor, Mixture]:
        """SG-LoRA's mixture for ``query``: its top-``k`` experts (the nearest alone when
        it leads by more than ``gate``), their sims, and the mixture; ``exclude`` as in
        ``nearest``."""
        idx, sims = self.nearest(query, experts_needed(k, gate), exclude=exclude)
        experts = [self.experts[i] for i in idx]
        used, mixture = guided_mixture(
            sims, [e.mean for e in experts], [e.var for e in experts], k=k, tau=tau, gate=gate
        )
        return idx[:used], sims[:used], mixture

    def weighted_weights(self, indices: Sequence[int], sims: torch.Tensor, tau: float) -> Tensors:
        """Baseline: the softmax-weighted mean of the experts' registered weights."""
        w = softmax_weights(sims, tau)
        rows = mix(w, [self.experts[i].weights for i in indices]).mean
        return self.layout.unflatten(rows)
