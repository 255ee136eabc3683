"""Generating adapters from descriptions with a trained generator.

``Generator`` owns one checkpoint's network; ``generate`` decodes a batch of
descriptions (the REST API's micro-batches land here): SG-LoRA each on its own
with ``SGDecoder``, ICM-LoRA in one forward pass.
SG-LoRA finds its top-K experts in a FAISS inner-product index over the
experts' description embeddings, mixes their late-trajectory statistics,
and samples z from the learned prior; ICM-LoRA samples z ~ N(0, I) given the
description (and the task vector of examples, when the caller gives some).
A seed fixes z, so the same (generator, description, seed) gives the same
adapter. Requests with labelled examples are adapted to them afterwards
(``generator.serve.fewshot``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from generator.adapt.examples import FewShot
from generator.adapt.pipeline import AdaptConfig
from generator.experts import Expert, load_expert
from generator.hypernet.checkpoint import Checkpoint
from generator.hypernet.methods import SG_LORA
from generator.hypernet.mixture import Mixture, experts_needed, gate_fires, mix, softmax_weights
from generator.hypernet.networks import ICMLoraNet, SGLoraNet, icm_condition
from generator.hypernet.tokens import from_tokens
from generator.serve.decode import VERSIONS, ExpertTerms, SGDecoder
from generator.tasks.evaluation import Evaluator
from generator.tasks.task_vector import TaskVectorizer
from registry.errors import AdapterNotFound, InvalidInput
from registry.lora_spec import Tensors
from registry.records import GeneratorRecord
from registry.service import Registry

# The version of ``Generator.generate``'s arithmetic, recorded in every recipe
# (registry.recipes): the newest of ``SGDecoder``'s versions. Add a version there with
# any change that can move a decoded bit (the mixture, the decoder, the
# serialisation), and keep the previous versions' arithmetic for rebuilds
# (``SGDecoder.decode(version="2")`` for "2", ``generator.serve.rebuild.decode_v1``
# for "1"); recipes of a version no longer kept must be materialised (`loramint
# adapters materialise`) by the loramint that made them, which the rebuild says when
# it meets one.
DECODER = VERSIONS[-1]


def adapter_config(template: dict[str, Any]) -> dict[str, Any]:
    """A generated adapter's ``adapter_config.json``: the generator's template without
    its null entries (PEFT reads a missing key as its default, which is null)."""
    return {k: v for k, v in template.items() if v is not None}


@dataclass(frozen=True)
class Neighbour:
    adapter_id: int
    name: str
    similarity: float
    weight: float


@dataclass(frozen=True)
class Generated:
    description: str
    method: str
    generator_id: int | None
    seed: int
    config: dict[str, Any]
    weights: Tensors
    neighbours: list[Neighbour] = field(default_factory=list)
    examples: int = 0
    embedding: np.ndarray | None = None  # (D,) the description's, reused on registration
    request_key: str = ""  # what else makes the request: its examples and adaptation
    fewshot: dict[str, Any] | None = None  # the adaptation's report (generator.adapt)


@dataclass(frozen=True)
class Request:
    description: str
    seed: int = 0
    fewshot: FewShot | None = None  # labelled examples of the task, when the caller has some
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    @property
    def examples(self) -> tuple[tuple[str, str], ...]:
        return (
            ()
            if self.fewshot is None
            else tuple((e.input, e.output) for e in self.fewshot.examples)
        )

    def key(self) -> str:
        """The examples, labels and adaptation settings, as a digest (part of a generated
        adapter's name: the same request gets the same adapter)."""
        if self.fewshot is None:
            return ""
        payload = [self.examples, self.fewshot.labels, sorted(vars(self.adapt).items())]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


class Generator:
    """A loaded generator. ``experts`` loads an expert adapter by id (SG-LoRA)."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        embed: Callable[[Sequence[str]], np.ndarray],
        experts: Callable[[int], Expert | None] | None = None,
        base: Callable[[], Evaluator] | None = None,
        record: GeneratorRecord | None = None,
        alive: Callable[[Sequence[int]], set[int]] | None = None,
    ) -> None:
        self.ckpt, self.embed, self.record = checkpoint, embed, record
        self._experts = experts
        self._alive = alive
        self._base_factory = base
        self._base: Evaluator | None = None
        self._vectorizer: TaskVectorizer | None = None
        self._cache: dict[int, Expert | None] = {}
        self._terms: dict[int, ExpertTerms] = {}
        # the experts loaded and their terms: several threads generate with one generator
        self._lock = threading.RLock()
        self.index: Any = None
        self.decoder: SGDecoder | None = None
        if checkpoint.method == SG_LORA:
            assert isinstance(checkpoint.net, SGLoraNet)
            self.decoder = SGDecoder(
                checkpoint.net,
                checkpoint.layout,
                checkpoint.normaliser,
                logvar_shift=float(checkpoint.hyper["logvar_shift"]),
                logvar_scale=float(checkpoint.hyper["logvar_scale"]),
            )
            from generator.serve.mixing import prepare

            # the mixture pass for k experts, and for the nearest one alone when a gate
            # can serve it: compiled or loaded now rather than in the first request
            gated = checkpoint.hyper.get("gate") is not None
            counts = [int(checkpoint.hyper["k"])] + ([1] if gated else [])
            prepare(counts, mean_only=self.decoder.mixture_only)
            import faiss

            emb = checkpoint.expert_embeddings
            if emb is None or self._experts is None:
                raise InvalidInput("an SG-LoRA generator needs its experts")
            self.index = faiss.IndexFlatIP(emb.shape[1])
            self.index.add(np.ascontiguousarray(emb.numpy(), dtype=np.float32))

    @property
    def method(self) -> str:
        return self.ckpt.method

    @property
    def id(self) -> int | None:
        return self.record.id if self.record else None

    @classmethod
    def from_registry(
        cls, registry: Registry, record: GeneratorRecord, *, base: Evaluator | None = None
    ) -> Generator:
        """The registered generator ``record``; ``base``: its base model already loaded
        (else it is loaded when first needed)."""
        ckpt = Checkpoint.from_bytes(registry.generator_checkpoint(record.id))

        def expert(adapter_id: int) -> Expert | None:
            try:
                rec = registry.get_adapter(adapter_id)
            except AdapterNotFound:
                return None  # deleted since training: mixed no more
            return load_expert(registry, rec, ckpt.layout)

        def load() -> Evaluator:
            if base is not None:
                return base
            path = registry.base_model_path(record.base_model)
            return Evaluator.from_path(path, device=registry.settings.device)

        return cls(
            ckpt,
            embed=registry.embedder.encode,
            experts=expert,
            base=load,
            record=record,
            alive=registry.live_adapter_ids,
        )

    def evaluator(self) -> Evaluator:
        """The base model (loaded on first use): for task vectors and few-shot scoring."""
        if self._base is None:
            if self._base_factory is None:
                raise InvalidInput("this generator cannot read examples (no base model)")
            self._base = self._base_factory()
        return self._base

    def forget_deleted(self) -> None:
        """Drop the loaded experts deleted since (by any process): a generator kept
        loaded must mix what a fresh one would, or its recipes would not rebuild."""
        with self._lock:
            loaded = [i for i, e in self._cache.items() if e is not None]
        if self._alive is None or not loaded:
            return
        live = self._alive(loaded)
        with self._lock:
            for adapter_id in set(loaded) - live:
                self._cache[adapter_id] = None
                self._terms.pop(adapter_id, None)

    @contextmanager
    def without(self, adapter_ids: Iterable[int]) -> Iterator[None]:
        """Mix as if ``adapter_ids`` had been deleted, inside the block: a leave-one-out
        study scores a training task with its own expert out of reach."""
        hidden = {int(i) for i in adapter_ids}
        with self._lock:
            for adapter_id in hidden:
                self._cache[adapter_id] = None
                self._terms.pop(adapter_id, None)
        try:
            yield
        finally:
            with self._lock:
                for adapter_id in hidden:
                    self._cache.pop(adapter_id, None)  # loaded again (if alive) when needed

    def expert(self, index: int) -> Expert | None:
        adapter_id = self.ckpt.expert_ids[index]
        with self._lock:
            if adapter_id not in self._cache:
                assert self._experts is not None
                self._cache[adapter_id] = self._experts(adapter_id)
            return self._cache[adapter_id]

    def neighbours(
        self, query: np.ndarray, k: int | None = None
    ) -> tuple[list[Expert], torch.Tensor]:
        """The top-``k`` (default: the generator's K) experts still registered for a
        (D,) unit query, and their sims."""
        k = int(self.ckpt.hyper["k"]) if k is None else k
        n = self.index.ntotal
        fetch = min(n, k)
        while True:
            sims, idx = self.index.search(query[None, :].astype(np.float32), fetch)
            found = [(int(i), float(s)) for i, s in zip(idx[0], sims[0], strict=True) if i >= 0]
            live: list[tuple[Expert, float]] = []
            for i, s in found:
                e = self.expert(i)
                if e is not None:
                    live.append((e, s))
            if len(live) >= k or fetch >= n:
                break
            fetch = min(n, fetch * 2 + k)
        if not live:
            raise InvalidInput("every expert of this generator has been deleted: retrain it")
        live = live[:k]
        return [e for e, _ in live], torch.tensor([s for _, s in live])

    @torch.no_grad()
    def generate(
        self,
        requests: Sequence[Request],
        *,
        vectors: np.ndarray | None = None,
        decoder: str = DECODER,
    ) -> list[Generated]:
        """Decode a batch of requests (SG-LoRA: each on its own with ``SGDecoder``, so an
        adapter's bits do not depend on its batch; ICM-LoRA: in one forward pass);
        ``vectors`` are the descriptions' embeddings when the caller already has them;
        ``decoder`` the SG-LoRA decoder version whose rounding to follow (a rebuild's)."""
        if not requests:
            return []
        if self.method == SG_LORA:
            self.forget_deleted()
        if vectors is None:
            vectors = self.embed([r.description for r in requests])  # (N, D)
        elif len(vectors) != len(requests):
            raise InvalidInput(f"{len(vectors)} embeddings for {len(requests)} requests")
        eps = torch.stack([self.noise(r.seed) for r in requests])  # (N, Z)
        layout, norm = self.ckpt.layout, self.ckpt.normaliser
        neighbours: list[list[Neighbour]] = [[] for _ in requests]
        if self.decoder is not None:
            rows = []
            for i, vec in enumerate(vectors):
                experts, weights, neighbours[i] = self.choose(np.asarray(vec))
                terms = [self.terms(e) for e in experts]
                flat = self.decoder.decode(weights, terms, eps[i], version=decoder)
                rows.append(self.decoder.rows(flat))
        else:
            assert isinstance(self.ckpt.net, ICMLoraNet)
            hidden = int(self.ckpt.hyper["hidden_size"])
            conds = []
            for r, vec in zip(requests, vectors, strict=True):
                tv = self.task_vector(r) if r.examples else None
                conds.append(icm_condition(torch.as_tensor(np.asarray(vec)), tv, hidden))
            rows = from_tokens(layout, norm, self.ckpt.net.sample(torch.stack(conds), eps))
        return [
            Generated(
                description=r.description,
                method=self.method,
                generator_id=self.id,
                seed=r.seed,
                config=adapter_config(self.ckpt.template),
                weights=layout.unflatten(row),
                neighbours=neighbours[i],
                examples=len(r.examples),
                embedding=np.asarray(vectors[i]),
                request_key=r.key(),
            )
            for i, (r, row) in enumerate(zip(requests, rows, strict=True))
        ]

    def noise(self, seed: int) -> torch.Tensor:
        """The latent noise (Z,) a seed fixes."""
        return torch.randn(
            self.ckpt.net.config.latent, generator=torch.Generator().manual_seed(seed)
        )

    def choose(self, query: np.ndarray) -> tuple[list[Expert], list[float], list[Neighbour]]:
        """SG-LoRA's experts for a (D,) unit query, their mixture weights, and the
        neighbours a client is told about."""
        hyper = self.ckpt.hyper
        k, tau, gate = int(hyper["k"]), float(hyper["tau"]), hyper.get("gate")
        experts, sims = self.neighbours(query, experts_needed(k, gate))
        if gate_fires(sims, gate):
            weights = [1.0]
        else:
            weights = [float(a) for a in softmax_weights(sims[:k], tau)]
        used = len(weights)
        # when the gate serves the nearest expert alone, the runner-up it was compared with
        # is a neighbour too, at weight 0: the choice (and a recipe's rebuild) depends on it
        compared = min(len(experts), max(used, 2 if gate is not None else 1))
        shown = weights + [0.0] * (compared - used)
        neighbours = [
            Neighbour(e.id, e.record.name, round(float(s), 5), round(a, 5))
            for e, s, a in zip(experts[:compared], sims[:compared], shown, strict=True)
        ]
        return experts[:used], weights, neighbours

    def mixture(self, query: np.ndarray) -> tuple[Mixture, list[Neighbour]]:
        """SG-LoRA's mixture for a (D,) unit query: mu*, sigma*^2 and the experts in it."""
        experts, weights, neighbours = self.choose(query)
        mixture = mix(torch.tensor(weights), [e.mean for e in experts], [e.var for e in experts])
        return mixture, neighbours

    def terms(self, expert: Expert) -> ExpertTerms:
        """What the decoder reads of ``expert`` (computed on its first use)."""
        assert self.decoder is not None
        with self._lock:
            found = self._terms.get(expert.id)
            if found is None:
                terms = self.decoder.expert_terms(expert.mean, expert.var)
                found = self._terms[expert.id] = terms
            return found

    def task_vector(self, request: Request) -> torch.Tensor:
        if self._vectorizer is None:
            base = self.evaluator()
            self._vectorizer = TaskVectorizer(base.model, base.tokenizer)
        return self._vectorizer(request.description, request.examples)
