"""Generating adapters into the registry: which generator serves a request, the
adapter's name, and its registration with provenance. ``generate_adapters`` is
the one generation path: the CLI, the Python API and the REST micro-batcher all
call it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

from generator.hypernet.methods import SG_LORA, check_method
from generator.serve.fewshot import adapt_generated
from generator.serve.generator import DECODER, Generated, Generator, Neighbour, Request
from registry.embeddings import clean_description
from registry.errors import Conflict, GeneratorNotFound
from registry.lora_spec import weights_bytes
from registry.models import Provenance
from registry.peft_format import PeftFiles
from registry.recipes import Recipe
from registry.recipes_store import NewRecipe
from registry.records import AdapterRecord, GeneratorRecord
from registry.service import Parent, Registry
from registry.validation import keyword_slug


def adapter_name(gen: Generated) -> str:
    """Readable and deterministic: the same request to the same generator, the same name."""
    key = json.dumps(
        [gen.generator_id, gen.method, gen.description, gen.seed, gen.examples, gen.request_key]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"{keyword_slug(gen.description, 40)}-{gen.method}-{digest}"


def register(
    registry: Registry, gen: Generated, *, base_model: str, name: str | None = None
) -> AdapterRecord:
    """Register a generated adapter with its provenance; the same request twice
    returns the adapter registered the first time."""
    final = name or adapter_name(gen)
    existing = registry.find_adapter(base_model, final)
    if existing is not None and name is None:
        return existing
    meta = _meta(gen)
    parents = [Parent(n.adapter_id, "expert", n.weight) for n in gen.neighbours]
    try:
        return registry.add_adapter(
            PeftFiles(config=gen.config, weights=weights_bytes(gen.weights)),
            base_model=base_model,
            description=gen.description,
            name=final,
            provenance=Provenance.GENERATED,
            parents=parents,
            meta=meta,
            embedding=gen.embedding,
        )
    except Conflict:
        again = registry.find_adapter(base_model, final)
        if again is not None and name is None:  # a concurrent identical request won
            return again
        raise


def _meta(gen: Generated) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "method": gen.method,
        "generator_id": gen.generator_id,
        "seed": gen.seed,
        "examples": gen.examples,
        "neighbours": [n.__dict__ for n in gen.neighbours],
    }
    if gen.fewshot is not None:
        meta["fewshot"] = gen.fewshot
    return meta


def generator_for(
    registry: Registry, base_model: str, method: str | None, generator_id: int | None = None
) -> GeneratorRecord:
    """The generator a request gets: ``generator_id`` when it names one (of ``method``,
    when given, and for ``base_model``), else the pinned one of ``method`` (default
    SG-LoRA), else the newest."""
    if generator_id is not None:
        rec = registry.get_generator(generator_id)
        if rec.base_model != base_model or method not in (None, rec.method):
            raise Conflict(  # a well-formed request that contradicts what is registered
                f"generator {generator_id} is {rec.method} for {rec.base_model}, "
                f"not {method or rec.method} for {base_model}"
            )
        return rec
    method = method or SG_LORA
    serving = registry.serving_generator(base_model, method)
    if serving is None:
        raise GeneratorNotFound(
            f"no {method} generator for {base_model}: train one with "
            f"`loramint generator train --method {method} --base-model {base_model}`"
        )
    return serving


class LoadedGenerators:
    """Generators loaded once per process: a request gets the generator that serves
    it now (``generator_for``), loaded on first use. When another generator comes to
    serve (a newer one, or a pin) it is loaded, and one that no longer serves any
    request seen is dropped. Safe across threads (the REST micro-batcher generates
    several batches at once): one thread loads a generator, the others wait for it."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._by_id: dict[int, Generator] = {}
        self._serving: dict[tuple[str, str | None, int | None], int] = {}
        self._lock = threading.Lock()

    def serving(self, base_model: str, method: str | None, generator_id: int | None) -> Generator:
        with self._lock:  # one thread loads a generator; the others wait for it
            return self._serving_now(base_model, method, generator_id)

    def _serving_now(
        self, base_model: str, method: str | None, generator_id: int | None
    ) -> Generator:
        serving = None  # every request asks: the id alone is one light query
        if generator_id is None:
            serving = self.registry.serving_generator_id(base_model, method or SG_LORA)
        record = None
        if serving is None or serving not in self._by_id:  # load it, or name what is wrong
            record = generator_for(self.registry, base_model, method, generator_id)
            serving = record.id
        self._serving[(base_model, method, generator_id)] = serving
        for gid in set(self._by_id) - set(self._serving.values()):
            del self._by_id[gid]
        loaded = self._by_id.get(serving)
        if loaded is None:
            assert record is not None  # a generator not loaded yet was looked up above
            loaded = self._by_id[serving] = Generator.from_registry(self.registry, record)
        return loaded


def generate_adapters(
    registry: Registry,
    requests: list[Request],
    *,
    base_model: str,
    method: str | None,
    generator_id: int | None = None,
    loaded: LoadedGenerators | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> list[tuple[AdapterRecord, Generated]]:
    """Generate and register one adapter per request (one decode call) with
    ``generator_for``'s choice: ``generator_id``, else the pinned, else the newest; a
    request with labelled examples is then adapted to them (``serve.fewshot``).
    ``loaded`` keeps generators loaded between calls (the REST service's); without
    it the generator is loaded for this call."""
    if method is not None:
        check_method(method)
    generator = (loaded or LoadedGenerators(registry)).serving(base_model, method, generator_id)
    limit = registry.settings.max_description_chars
    requests = [
        dataclasses.replace(r, description=clean_description(r.description, limit))
        for r in requests
    ]
    made = generator.generate(requests)
    out: list[tuple[AdapterRecord, Generated] | None] = [None] * len(requests)
    recipes: list[tuple[int, Generated, NewRecipe]] = []
    for i, (request, gen) in enumerate(zip(requests, made, strict=True)):
        if request.fewshot is None and _as_recipe(registry, generator):
            recipes.append((i, gen, _new_recipe(gen, generator)))
            continue
        if request.fewshot is not None:
            done = registry.find_adapter(base_model, adapter_name(gen))
            if done is not None:  # the same request again: its adapter as registered
                gen = _as_registered(gen, done)
            else:
                gen = adapt_generated(generator, request, gen, on_progress=on_progress)
        out[i] = (register(registry, gen, base_model=base_model), gen)
    records = registry.add_recipes(base_model, [item for _, _, item in recipes])
    for (i, gen, _), record in zip(recipes, records, strict=True):
        out[i] = (record, gen)
    return [pair for pair in out if pair is not None]


def _as_recipe(registry: Registry, generator: Generator) -> bool:
    """Zero-shot adapters of a registered generator are kept as recipes (unless the
    registry is set to store weights): their decode is deterministic. Few-shot ones
    are stored: their adaptation runs the base model, whose CPU kernels are not
    bit-exact across thread counts."""
    return registry.settings.generated_storage == "recipe" and generator.record is not None


def _new_recipe(gen: Generated, generator: Generator) -> NewRecipe:
    assert generator.record is not None and gen.embedding is not None
    return NewRecipe(
        name=adapter_name(gen),
        description=gen.description,
        config=gen.config,
        weights=weights_bytes(gen.weights),
        embedding=gen.embedding,
        recipe=Recipe(generator.record.id, generator.record.sha256, gen.seed, DECODER),
        parents=[Parent(n.adapter_id, "expert", n.weight) for n in gen.neighbours],
        meta=_meta(gen),
    )


def _as_registered(gen: Generated, record: AdapterRecord) -> Generated:
    """``gen`` as the registry already holds it (its adaptation is not run again)."""
    neighbours = [Neighbour(**n) for n in record.meta.get("neighbours", [])]
    return dataclasses.replace(gen, neighbours=neighbours, fewshot=record.meta.get("fewshot"))
