"""Generated adapters as recipes (``registry.recipes``): registered a micro-batch
at a time, rebuilt on demand, materialised into stored weights on request."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry import blob_refs, lora_spec
from registry.blobs import sha256_hex
from registry.db import transaction
from registry.embeddings import clean_description
from registry.errors import Conflict, GeneratorNotFound, InvalidInput
from registry.models import (
    AdapterParentRow,
    AdapterRecipeRow,
    AdapterRow,
    DescriptionEmbeddingRow,
    GeneratorRow,
    Provenance,
    utcnow,
)
from registry.recipes import Recipe, RecipeBuilder, RecipeInput, WeightCache, checked, load_builder
from registry.records import AdapterRecord, Parent, ParentLink
from registry.search_index import bump_generation
from registry.validation import check_json, check_name

if TYPE_CHECKING:
    from registry.blobs import BlobStore
    from registry.embeddings import Embedder
    from registry.models import AdapterRow as _Row
    from registry.models import BaseModelRow
    from registry.settings import Settings


@dataclass(frozen=True)
class NewRecipe:
    """One generated adapter of a batch to register as a recipe. ``weights`` are the
    safetensors bytes the generator decoded: validated, hashed and cached, not stored."""

    name: str
    description: str
    config: dict[str, Any]
    weights: bytes
    embedding: np.ndarray
    recipe: Recipe
    parents: Sequence[Parent] = ()
    meta: dict[str, Any] = field(default_factory=dict)


class _Host(Protocol):
    """What ``RecipeStore`` needs from the registry it is mixed into."""

    _sessions: sessionmaker[Session]
    _builder: RecipeBuilder | None
    blobs: BlobStore
    cache: WeightCache
    hashing: ThreadPoolExecutor | None
    settings: Settings

    @property
    def embedder(self) -> Embedder: ...

    def _base_model_row(self, s: Session, name: str) -> BaseModelRow: ...

    def _base_model_shapes(self, name: str) -> tuple[int, dict[str, list[int]]]: ...

    def _adapter_layout(
        self, base_model: str, config: dict[str, Any]
    ) -> tuple[dict[str, tuple[int, int]], lora_spec.LoraSpec]: ...

    def _adapter_row(self, s: Session, adapter_id: int) -> _Row: ...

    def _drop_blobs_if_unused(self, keys: Sequence[str]) -> None: ...

    def _insert_recipes(
        self, base_model: str, base_model_id: int, prepared: list[Any], *, checked: bool
    ) -> list[AdapterRecord]: ...

    def get_adapter(self, adapter_id: int) -> AdapterRecord: ...

    def recipe_weights(self, adapter_id: int) -> bytes: ...

    def materialise_adapter(self, adapter_id: int) -> AdapterRecord: ...


# The weights' sha256 (about 1 ms an adapter) runs here while the registering thread
# validates them and opens its transaction: hashlib releases the GIL, so a lone
# request waits for the longer of the two instead of both. Two threads: several
# micro-batches may register at once.
_HASHING = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256")

# built once: every registration runs it
_GENERATORS_THERE = sa.select(GeneratorRow.id).where(
    GeneratorRow.id.in_(sa.bindparam("ids", expanding=True))
)


class RecipeStore:
    """The recipe half of ``Registry``."""

    _builder: RecipeBuilder | None
    cache: WeightCache
    # where the weights are hashed; None: on the registering thread (``bench/generate.py``
    # times that beside the helpers, request by request)
    hashing: ThreadPoolExecutor | None = _HASHING

    def add_recipes(
        self: _Host, base_model: str, items: Sequence[NewRecipe]
    ) -> list[AdapterRecord]:
        """Register generated adapters as recipes in one transaction. An item whose name
        is already registered for ``base_model`` returns that adapter (the same request
        again); everything is validated before anything is written."""
        if not items:
            return []
        base_model_id = self._base_model_shapes(base_model)[0]
        digests = [_hash(self.hashing, item.weights) for item in items]
        try:
            prepared = [
                _validated(self, base_model, item, digest)
                for item, digest in zip(items, digests, strict=True)
            ]
        except BaseException:
            for digest in digests:  # an item was refused: nothing is registered
                digest.cancel()
            raise
        try:
            records = self._insert_recipes(base_model, base_model_id, prepared, checked=False)
        except sa.exc.IntegrityError:
            # a concurrent identical request won a name, or what the rows point to went
            # (base model, experts): again, with each reference checked so it is named
            records = self._insert_recipes(base_model, base_model_id, prepared, checked=True)
        for item, *_rest, digest in prepared:
            self.cache.put(digest.result(), item.weights)
        return records

    def _insert_recipes(
        self: _Host, base_model: str, base_model_id: int, prepared: list[Any], *, checked: bool
    ) -> list[AdapterRecord]:
        """The rows of ``prepared`` in one transaction, written with Core statements (one
        per table); each item's sha256 is its last element, a ``Future``. Unchecked, a
        name already registered, or a base model or expert deleted meanwhile, fails a
        constraint (IntegrityError); ``checked`` looks them up first, returns the
        adapters already registered and says which is gone."""
        with transaction(self._sessions) as s:
            existing: dict[str, AdapterRow] = {}
            if checked:
                base_model_id = self._base_model_row(s, base_model).id
                names = [p[0].name for p in prepared]
                existing = {
                    r.name: r
                    for r in s.scalars(
                        sa.select(AdapterRow).where(
                            AdapterRow.base_model_id == base_model_id, AdapterRow.name.in_(names)
                        )
                    )
                }
            # no foreign key (a recipe's record outlives its generator): looked up
            generators = {p[0].recipe.generator_id for p in prepared}
            there = s.scalars(_GENERATORS_THERE, {"ids": sorted(generators)})
            missing = sorted(generators - set(there))
            if missing:
                raise GeneratorNotFound(f"no generator with id {missing[0]}")
            parents = {link.adapter_id for p in prepared for link in p[0].parents}
            if parents and checked:
                found = s.scalars(sa.select(AdapterRow.id).where(AdapterRow.id.in_(parents)))
                gone = sorted(parents - set(found))
                if gone:  # a recipe that mixed them could not be rebuilt
                    raise Conflict(f"experts {gone} were deleted while generating; retry")
            fresh = {}
            for item, spec, expected, vector, digest in prepared:
                if item.name not in existing and item.name not in fresh:
                    fresh[item.name] = (item, spec, expected, vector, digest)
            made = _insert_rows(s, base_model, base_model_id, self.embedder.name, fresh.values())
            out = []
            for item, *_ in prepared:
                if item.name in made:
                    out.append(made[item.name])
                else:
                    old = existing[item.name]
                    out.append(AdapterRecord.of(old, _parents(s, old.id)))
            return out

    def recipe(self: _Host, adapter_id: int) -> Recipe | None:
        """How adapter ``adapter_id`` is rebuilt (None: not a generated recipe)."""
        with self._sessions() as s:
            self._adapter_row(s, adapter_id)
            row = s.get(AdapterRecipeRow, adapter_id)
            return None if row is None else _recipe_of(row)

    def recipe_adapters(
        self: _Host, *, generator_id: int | None = None, parent_id: int | None = None
    ) -> list[int]:
        """Adapters kept only as recipes (not materialised), of a generator or built from
        an expert."""
        with self._sessions() as s:
            return unmaterialised(s, generator_id=generator_id, parent_id=parent_id)

    def recipe_weights(self: _Host, adapter_id: int) -> bytes:
        """Adapter ``adapter_id``'s weights rebuilt from its recipe (cached), checked
        against its sha256."""
        with self._sessions() as s:
            row = self._adapter_row(s, adapter_id)
            sha = row.sha256
            cached = self.cache.get(sha)
            if cached is not None:
                return cached
            recipe = s.get(AdapterRecipeRow, adapter_id)
            emb = s.get(DescriptionEmbeddingRow, adapter_id)
            if recipe is None or emb is None:
                raise InvalidInput(f"adapter {adapter_id} has no recipe to rebuild it from")
            source = RecipeInput(
                adapter_id=adapter_id,
                base_model=row.base_model.name,
                description=row.description,
                embedding=np.frombuffer(emb.vector, dtype=np.float32).copy(),
                recipe=_recipe_of(recipe),
            )
        builder = self._builder
        if builder is None:
            builder = self._builder = load_builder()
        built = checked(builder(self, source), sha, adapter_id)
        self.cache.put(sha, built)
        return built

    def materialise_adapter(self: _Host, adapter_id: int) -> AdapterRecord:
        """Store a recipe adapter's weights as a blob: from now on it no longer needs its
        generator or experts. An adapter with stored weights is returned as it is."""
        record = self.get_adapter(adapter_id)
        if record.stored == "weights":
            return record
        weights = self.recipe_weights(adapter_id)
        key = self.blobs.put(weights)
        try:
            with transaction(self._sessions) as s:
                blob_refs.keep(s, self.blobs, {key: weights})
                row = self._adapter_row(s, adapter_id)
                row.blob_key = key
                s.flush()
                return AdapterRecord.of(row, _parents(s, adapter_id))
        except BaseException:
            self._drop_blobs_if_unused([key])
            raise

    def materialise_recipes(self: _Host, adapter_ids: Sequence[int]) -> list[int]:
        """Materialise each of ``adapter_ids`` (deleted meanwhile: skipped)."""
        from registry.errors import AdapterNotFound

        done = []
        for adapter_id in adapter_ids:
            try:
                self.materialise_adapter(adapter_id)
            except AdapterNotFound:
                continue
            done.append(adapter_id)
        return done


def unmaterialised(
    s: Session, *, generator_id: int | None = None, parent_id: int | None = None
) -> list[int]:
    """Adapters kept only as recipes, of a generator or built from an expert."""
    query = (
        sa.select(AdapterRecipeRow.adapter_id)
        .join(AdapterRow, AdapterRow.id == AdapterRecipeRow.adapter_id)
        .where(AdapterRow.blob_key.is_(None))
    )
    if generator_id is not None:
        query = query.where(AdapterRecipeRow.generator_id == generator_id)
    if parent_id is not None:
        query = query.join(AdapterParentRow, AdapterParentRow.child_id == AdapterRow.id).where(
            AdapterParentRow.parent_id == parent_id
        )
    return sorted(s.scalars(query))


def refuse_if_needed(ids: list[int], what: str, fix: str) -> None:
    if ids:
        shown = ", ".join(map(str, ids[:20])) + (
            f" and {len(ids) - 20} more" if len(ids) > 20 else ""
        )
        raise Conflict(
            f"{len(ids)} generated adapters are kept as recipes that need {what} "
            f"(ids {shown}): {fix}"
        )


def _insert_rows(
    s: Session, base_model: str, base_model_id: int, model: str, fresh: Iterable[Any]
) -> dict[str, AdapterRecord]:
    """Insert the rows of new recipes (``prepared`` tuples): one INSERT per table (the
    adapters' with RETURNING), through the connection rather than the ORM's bulk
    path, which costs more per statement than a single-adapter request's SQL."""
    fresh = list(fresh)
    if not fresh:
        return {}
    now = utcnow()
    rows = [
        {
            "name": item.name,
            "description": item.description,
            "base_model_id": base_model_id,
            **lora_spec.row_fields(spec, expected),
            "provenance": Provenance.GENERATED.value,
            "config": item.config,
            "metrics": {},
            "meta": item.meta,
            "sha256": digest.result(),
            "blob_key": None,
            "size_bytes": len(item.weights),
            "created_at": now,
        }
        for item, spec, expected, vector, digest in fresh
    ]
    conn = s.connection()
    adapters = _table(AdapterRow)
    insert = sa.insert(adapters).returning(adapters.c.id, sort_by_parameter_order=True)
    ids = conn.execute(insert, rows).scalars().all()
    made: dict[str, AdapterRecord] = {}
    recipes, vectors, links = [], [], []
    for adapter_id, row, (item, _, _, vector, _) in zip(ids, rows, fresh, strict=True):
        r = item.recipe
        recipes.append(
            {"adapter_id": adapter_id, "generator_id": r.generator_id,
             "generator_sha256": r.generator_sha256, "seed": r.seed, "decoder": r.decoder}
        )  # fmt: skip
        vectors.append(
            {"adapter_id": adapter_id, "model": model, "dim": int(vector.shape[0]),
             "vector": vector.tobytes()}
        )  # fmt: skip
        links += [
            {"child_id": adapter_id, "parent_id": p.adapter_id, "role": p.role,
             "weight": p.weight}
            for p in item.parents
        ]  # fmt: skip
        made[item.name] = _record(adapter_id, base_model, row, item.parents)
    conn.execute(sa.insert(_table(AdapterRecipeRow)), recipes)
    conn.execute(sa.insert(_table(DescriptionEmbeddingRow)), vectors)
    if links:
        conn.execute(sa.insert(_table(AdapterParentRow)), links)
    bump_generation(s)
    return made


def _validated(
    host: _Host, base_model: str, item: NewRecipe, digest: Future[str]
) -> tuple[NewRecipe, lora_spec.LoraSpec, dict[str, tuple[int, int]], np.ndarray, Future[str]]:
    """``item`` checked for registration as a recipe of ``base_model``, with its layout,
    embedding vector and digest: ``add_recipes``'s ``prepared`` tuple."""
    limit = host.settings.max_description_chars
    if clean_description(item.description, limit) != item.description:
        raise InvalidInput("a recipe's description must be cleaned before it is embedded")
    check_name("adapter", item.name)
    expected, spec = host._adapter_layout(base_model, item.config)
    lora_spec.check_weights_bytes(item.weights, expected)
    vector = np.asarray(item.embedding, dtype=np.float32).reshape(-1)
    if vector.shape[0] != host.embedder.dim:
        raise InvalidInput(f"embedding has {vector.shape[0]} numbers, not {host.embedder.dim}")
    check_json("meta", item.meta)
    return item, spec, expected, vector, digest


def _hash(pool: ThreadPoolExecutor | None, data: bytes) -> Future[str]:
    if pool is not None:
        return pool.submit(sha256_hex, data)
    done: Future[str] = Future()
    done.set_result(sha256_hex(data))
    return done


def _table(row_class: type[Any]) -> sa.Table:
    return cast("sa.Table", row_class.__table__)


def _recipe_of(row: AdapterRecipeRow) -> Recipe:
    return Recipe(row.generator_id, row.generator_sha256, row.seed, row.decoder)


def _record(
    adapter_id: int, base_model: str, row: dict[str, Any], parents: Sequence[Parent]
) -> AdapterRecord:
    """The record of a row inserted from ``row`` (no round trip to read it back)."""
    return AdapterRecord(
        id=adapter_id,
        name=row["name"],
        description=row["description"],
        base_model=base_model,
        peft_type=row["peft_type"],
        rank=row["rank"],
        alpha=row["alpha"],
        target_modules=list(row["target_modules"]),
        layout_signature=row["layout_signature"],
        provenance=row["provenance"],
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        created_at=row["created_at"],
        config=dict(row["config"]),
        metrics={},
        meta=dict(row["meta"]),
        parents=[ParentLink(p.adapter_id, p.role, p.weight) for p in parents],
        stored="recipe",
    )


def _parents(s: Session, adapter_id: int) -> list[ParentLink]:
    rows = s.scalars(sa.select(AdapterParentRow).where(AdapterParentRow.child_id == adapter_id))
    return [ParentLink(r.parent_id, r.role, r.weight) for r in rows]


__all__ = ["NewRecipe", "RecipeStore"]
