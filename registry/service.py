"""The registry's Python API. The CLI and the REST layer are thin shells over it.

Every write validates everything first, then stores the blob (content
addressed, atomic), then commits the rows in one transaction; a failure at
any step leaves no row, no index entry and no orphaned blob behind. Generator
checkpoints follow the same rules (``registry.generators_store``); the job
queue and API keys live in ``registry.jobs_store`` and ``registry.keys_store``,
base models in ``registry.base_models_store``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry import blob_refs, lineage, lora_spec, model_card, peft_format
from registry.base_models_store import BaseModelStore
from registry.blobs import BlobStore, LocalBlobStore
from registry.db import open_database, session_factory, transaction
from registry.embeddings import Embedder, clean_description, get_embedder
from registry.errors import AdapterNotFound, Conflict, InvalidInput, NotFound
from registry.generators_store import GeneratorStore
from registry.jobs_store import JobStore
from registry.keys_store import KeyStore
from registry.listing import adapter_order
from registry.models import (
    AdapterArtifactRow,
    AdapterParentRow,
    AdapterRecipeRow,
    AdapterRow,
    BaseModelRow,
    DescriptionEmbeddingRow,
    Provenance,
)
from registry.peft_format import PeftFiles
from registry.recipes import RecipeBuilder, WeightCache
from registry.recipes_store import RecipeStore, unmaterialised
from registry.records import AdapterRecord, GeneratorRecord, Parent, ParentLink, SearchHit
from registry.search_index import DescriptionIndexes, bump_generation
from registry.settings import Settings, get_settings
from registry.validation import NAME_RE, check_json, check_name, default_adapter_name
from registry.vector_index import VectorIndex

MAX_K = 1000


class Registry(BaseModelStore, GeneratorStore, JobStore, KeyStore, RecipeStore):
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        engine: sa.Engine | None = None,
        blobs: BlobStore | None = None,
        embedder: Embedder | None = None,
        builder: RecipeBuilder | None = None,
    ) -> None:
        """``builder`` rebuilds recipe adapters (``registry.recipes``; default: the
        installed generator package's)."""
        self.settings = settings or get_settings()
        self.engine = engine or open_database(self.settings.database_url)
        self._sessions = session_factory(self.engine)
        self.blobs: BlobStore = blobs or LocalBlobStore(self.settings.blob_dir)
        self._embedder = embedder
        self._builder = builder
        self.cache = WeightCache(self.settings.recipe_cache_bytes)
        self._base_models: dict[str, tuple[int, dict[str, list[int]]]] = {}
        self._layouts = {}
        self._indexes = DescriptionIndexes(
            self._sessions,
            self.settings,
            lambda: self.embedder,
            self.engine.url.render_as_string(hide_password=True),
        )

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder()
        return self._embedder

    def close(self) -> None:
        self.engine.dispose()

    # -- adapters: write -----------------------------------------------------

    def add_adapter(
        self,
        source: Path | PeftFiles,
        *,
        base_model: str,
        description: str,
        name: str | None = None,
        provenance: Provenance | str = Provenance.IMPORTED,
        parents: Sequence[Parent] = (),
        metrics: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        artifacts: dict[str, bytes] | None = None,
        on_progress: Callable[[str], None] | None = None,
        embedding: np.ndarray | None = None,
        refuse_duplicates: bool = False,
    ) -> AdapterRecord:
        """Validate and register a PEFT LoRA adapter (a folder, a zip, or files in memory).

        ``artifacts`` are named extra files kept with the adapter (trajectory
        statistics, seed examples); they are stored and removed with it.
        ``embedding`` is the description's embedding when the caller already
        computed it with this registry's embedder (a generator does); it is
        used only when the description needed no cleaning. ``refuse_duplicates`` (uploads)
        refuses weights already registered for the base model, naming that adapter.
        """
        raw = description
        description = clean_description(description, self.settings.max_description_chars)
        provenance = check_provenance(provenance)
        if name is not None:
            check_name("adapter", name)
        given = None
        if embedding is not None:
            given = np.asarray(embedding, dtype=np.float32).reshape(-1)
            if given.shape[0] != self.embedder.dim:
                dim = self.embedder.dim
                raise InvalidInput(f"embedding has {given.shape[0]} numbers, the embedder {dim}")
            if raw != description:
                given = None  # the cleaned text is what gets embedded
        files = (
            source
            if isinstance(source, PeftFiles)
            else peft_format.read_adapter(Path(source), max_bytes=self.settings.max_adapter_bytes)
        )
        spec = lora_spec.spec_from_config(files.config)
        found = self._described(base_model, on_progress)
        expected = spec.expected_shapes(found.shapes.linear_shapes)
        tensors = lora_spec.parse_weights(files.weights)
        lora_spec.check_tensors(tensors, expected)
        del tensors
        vector = given if given is not None else self.embedder.encode([description])[0]
        check_json("metrics", metrics)
        check_json("meta", meta)

        artifacts = artifacts or {}
        for art_name in artifacts:
            if not NAME_RE.match(art_name):
                raise InvalidInput(f"artifact name {art_name!r} is not a simple name")
        key = self.blobs.put(files.weights)
        art_keys = {art_name: self.blobs.put(data) for art_name, data in artifacts.items()}
        try:
            with transaction(self._sessions) as s:
                stored = {key: files.weights} | {k: artifacts[n] for n, k in art_keys.items()}
                blob_refs.keep(s, self.blobs, stored)  # the lock, first
                bm_row = self._base_model_row_for(s, found)  # registered with the adapter
                for p in parents:
                    if s.get(AdapterRow, p.adapter_id) is None:
                        raise AdapterNotFound(f"parent adapter {p.adapter_id} does not exist")
                final_name = name or default_adapter_name(description, key)
                if s.scalar(
                    sa.select(AdapterRow.id).where(
                        AdapterRow.base_model_id == bm_row.id, AdapterRow.name == final_name
                    )
                ):
                    raise Conflict(
                        f"an adapter named {final_name!r} already exists for {bm_row.name}"
                    )
                if refuse_duplicates:
                    _refuse_twin(s, bm_row, key)
                row = AdapterRow(
                    name=final_name,
                    description=description,
                    base_model=bm_row,
                    **lora_spec.row_fields(spec, expected),
                    provenance=provenance.value,
                    config=files.config,
                    metrics=metrics or {},
                    meta=meta or {},
                    sha256=key,
                    blob_key=key,
                    size_bytes=len(files.weights),
                )
                s.add(row)
                s.flush()
                s.add(
                    DescriptionEmbeddingRow(
                        adapter_id=row.id,
                        model=self.embedder.name,
                        dim=int(vector.shape[0]),
                        vector=vector.astype(np.float32).tobytes(),
                    )
                )
                for p in parents:
                    s.add(
                        AdapterParentRow(
                            child_id=row.id, parent_id=p.adapter_id, role=p.role, weight=p.weight
                        )
                    )
                for art_name, art_key in art_keys.items():
                    s.add(
                        AdapterArtifactRow(
                            adapter_id=row.id,
                            name=art_name,
                            blob_key=art_key,
                            size_bytes=len(artifacts[art_name]),
                        )
                    )
                bump_generation(s)
                s.flush()
                record = AdapterRecord.of(
                    row, [ParentLink(p.adapter_id, p.role, p.weight) for p in parents]
                )
        except sa.exc.IntegrityError as exc:
            self._drop_blobs_if_unused([key, *art_keys.values()])
            raise Conflict(f"adapter could not be registered: {exc.orig}") from exc
        except BaseException:
            self._drop_blobs_if_unused([key, *art_keys.values()])
            raise
        return record

    def update_metrics(self, adapter_id: int, metrics: dict[str, Any]) -> AdapterRecord:
        """Merge ``metrics`` into an adapter's metrics (e.g. evaluation results)."""
        check_json("metrics", metrics)
        with transaction(self._sessions) as s:
            row = self._adapter_row(s, adapter_id)
            row.metrics = {**(row.metrics or {}), **metrics}
            s.flush()
            return AdapterRecord.of(row, self._parents(s, adapter_id))

    def delete_adapter(self, adapter_id: int) -> None:
        """Delete an adapter; the recipe adapters built from it (an expert) are
        materialised first, since their rebuild would mix it."""
        self.materialise_recipes(self.recipe_adapters(parent_id=adapter_id))
        with blob_refs.dropping(self.blobs) as retired, transaction(self._sessions) as s:
            blob_refs.lock(s)
            row = self._adapter_row(s, adapter_id)
            if unmaterialised(s, parent_id=adapter_id):
                raise Conflict(f"adapters are being generated from adapter {adapter_id}; retry")
            s.execute(sa.delete(AdapterRecipeRow).where(AdapterRecipeRow.adapter_id == adapter_id))
            lineage.remember_deleted_parent(s, row)
            keys = [row.blob_key or ""] + list(
                s.scalars(
                    sa.select(AdapterArtifactRow.blob_key).where(
                        AdapterArtifactRow.adapter_id == adapter_id
                    )
                )
            )
            s.execute(
                sa.delete(AdapterArtifactRow).where(AdapterArtifactRow.adapter_id == adapter_id)
            )
            s.execute(
                sa.delete(AdapterParentRow).where(
                    sa.or_(
                        AdapterParentRow.child_id == adapter_id,
                        AdapterParentRow.parent_id == adapter_id,
                    )
                )
            )
            s.execute(
                sa.delete(DescriptionEmbeddingRow).where(
                    DescriptionEmbeddingRow.adapter_id == adapter_id
                )
            )
            s.delete(row)
            bump_generation(s)
            retired += blob_refs.retire(s, self.blobs, [k for k in keys if k])

    def children(self, adapter_id: int) -> list[lineage.Child]:
        """The adapters built from this one (its lineage the other way)."""
        with self._sessions() as s:
            self._adapter_row(s, adapter_id)
            return lineage.children_of(s, adapter_id)

    def derived_generators(self, adapter_id: int) -> list[GeneratorRecord]:
        """The generators trained with this adapter among their experts."""
        with self._sessions() as s:
            return lineage.generators_trained_on(s, adapter_id)

    def _drop_blobs_if_unused(self, keys: Sequence[str]) -> None:
        """Delete the blobs no adapter, artifact, generator or job artifact refers to (blobs
        are shared by content: a checkpoint may be byte-identical to an adapter's weights),
        under the lock that uploads of the same bytes take (``registry.blob_refs``)."""
        with blob_refs.dropping(self.blobs) as retired, transaction(self._sessions) as s:
            retired += blob_refs.retire(s, self.blobs, keys)

    def recover_blobs(self) -> dict[str, int]:
        """Settle what killed processes left in the blob store (moved-aside blobs still
        referred to go back, the rest and unfinished writes' temporary files go)."""

        def still_referenced(key: str) -> bool:
            with self._sessions() as s:
                return blob_refs.referenced(s, key)

        return self.blobs.recover(still_referenced)

    def artifact_names(self, adapter_id: int) -> list[str]:
        with self._sessions() as s:
            self._adapter_row(s, adapter_id)
            return sorted(
                s.scalars(
                    sa.select(AdapterArtifactRow.name).where(
                        AdapterArtifactRow.adapter_id == adapter_id
                    )
                )
            )

    def artifact(self, adapter_id: int, name: str) -> bytes:
        """The bytes of a named artifact of an adapter, verified against their sha256."""
        with self._sessions() as s:
            key = s.scalar(
                sa.select(AdapterArtifactRow.blob_key).where(
                    AdapterArtifactRow.adapter_id == adapter_id, AdapterArtifactRow.name == name
                )
            )
        if key is None:
            raise NotFound(f"adapter {adapter_id} has no artifact {name!r}")
        return self.blobs.get(key)

    # -- adapters: read ------------------------------------------------------

    def _adapter_row(self, s: Session, adapter_id: int) -> AdapterRow:
        row = s.get(AdapterRow, adapter_id)
        if row is None:
            raise AdapterNotFound(f"no adapter with id {adapter_id}")
        return row

    def _parents(self, s: Session, adapter_id: int) -> list[ParentLink]:
        rows = s.scalars(
            sa.select(AdapterParentRow).where(AdapterParentRow.child_id == adapter_id)
        ).all()
        return [ParentLink(r.parent_id, r.role, r.weight) for r in rows]

    def get_adapter(self, adapter_id: int) -> AdapterRecord:
        with self._sessions() as s:
            row = self._adapter_row(s, adapter_id)
            return AdapterRecord.of(row, self._parents(s, adapter_id))

    def live_adapter_ids(self, ids: Sequence[int]) -> set[int]:
        """Which of ``ids`` are registered adapters (one query)."""
        if not ids:
            return set()
        with self._sessions() as s:
            return set(s.scalars(_LIVE_IDS, {"ids": list(ids)}))

    def find_adapter(self, base_model: str, name: str) -> AdapterRecord | None:
        with self._sessions() as s:
            row = s.scalar(
                sa.select(AdapterRow)
                .join(BaseModelRow)
                .where(BaseModelRow.name == base_model, AdapterRow.name == name)
            )
            return None if row is None else AdapterRecord.of(row, self._parents(s, row.id))

    def list_adapters(
        self,
        *,
        base_model: str | None = None,
        provenance: str | None = None,
        limit: int = 50,
        offset: int = 0,
        sort: str = "id",
        descending: bool = False,
    ) -> list[AdapterRecord]:
        """A page of adapters in ``sort`` order (``registry.listing.SORTS``)."""
        if limit < 1 or limit > 10_000:
            raise InvalidInput(f"limit must be between 1 and 10000, got {limit}")
        if offset < 0:
            raise InvalidInput(f"offset must be >= 0, got {offset}")
        order = adapter_order(self.engine.dialect.name, sort, descending)
        query = sa.select(AdapterRow).join(BaseModelRow).order_by(*order)
        if base_model:
            query = query.where(BaseModelRow.name == base_model)
        if provenance:
            query = query.where(AdapterRow.provenance == check_provenance(provenance).value)
        with self._sessions() as s:
            rows = s.scalars(query.limit(limit).offset(offset)).all()
            return [AdapterRecord.of(r) for r in rows]

    def count_adapters(
        self, *, base_model: str | None = None, provenance: str | None = None
    ) -> int:
        query = sa.select(sa.func.count(AdapterRow.id)).join(BaseModelRow)
        if base_model:
            query = query.where(BaseModelRow.name == base_model)
        if provenance:
            query = query.where(AdapterRow.provenance == check_provenance(provenance).value)
        with self._sessions() as s:
            return int(s.scalar(query) or 0)

    def adapter_files(self, adapter_id: int) -> PeftFiles:
        """Config and weight bytes of an adapter, the weights verified against their sha256
        (a recipe adapter's rebuilt: ``registry.recipes``)."""
        with self._sessions() as s:
            row = self._adapter_row(s, adapter_id)
            config, key = dict(row.config), row.blob_key
        weights = self.recipe_weights(adapter_id) if key is None else self.blobs.get(key)
        return PeftFiles(config=config, weights=weights)

    def export_adapter(self, adapter_id: int, out: Path, *, overwrite: bool = False) -> Path:
        """Write the adapter as a PEFT folder (or a .zip) that PeftModel.from_pretrained
        loads, with its model card (README.md)."""
        files = self.adapter_files(adapter_id)
        card = {model_card.CARD_NAME: self.model_card(adapter_id).encode()}
        return peft_format.write_adapter(
            Path(out), files.config, files.weights, overwrite=overwrite, extra=card
        )

    def adapter_zip(self, adapter_id: int) -> bytes:
        """The download: a zip of the PEFT files and the model card, at its root."""
        files = self.adapter_files(adapter_id)
        card = {model_card.CARD_NAME: self.model_card(adapter_id).encode()}
        return peft_format.zip_bytes(files.config, files.weights, card)

    def model_card(self, adapter_id: int) -> str:
        """The adapter's model card (registry.model_card), from what the registry knows now."""
        return model_card.card_of(self, adapter_id)

    # -- semantic search -----------------------------------------------------

    def search(self, text: str, *, k: int = 5, base_model: str | None = None) -> list[SearchHit]:
        """Adapters whose descriptions are nearest in meaning to ``text``."""
        text = clean_description(text, self.settings.max_description_chars)
        _check_k(k)  # before loading the embedder
        query = self.embedder.encode([text])
        return self.search_vector(query[0], k=k, base_model=base_model)

    def search_vector(
        self, vector: np.ndarray, *, k: int = 5, base_model: str | None = None
    ) -> list[SearchHit]:
        _check_k(k)
        with self._sessions() as s:
            if base_model:
                bm_ids = [self._base_model_row(s, base_model).id]
            else:
                bm_ids = list(s.scalars(sa.select(BaseModelRow.id)).all())
        scored: list[tuple[float, int]] = []
        for bm_id in bm_ids:
            index = self.index_for(bm_id)
            scores, ids = index.search(vector[None, :], k)
            scored += [
                (float(sc), int(i)) for sc, i in zip(scores[0], ids[0], strict=True) if i >= 0
            ]
        scored.sort(key=lambda t: -t[0])
        scored = scored[:k]
        with self._sessions() as s:
            rows = {
                r.id: r
                for r in s.scalars(
                    sa.select(AdapterRow).where(AdapterRow.id.in_([i for _, i in scored]))
                ).all()
            }
            # an id missing here was deleted after the index was read: skip it
            return [SearchHit(AdapterRecord.of(rows[i]), sc) for sc, i in scored if i in rows]

    def generation(self) -> int:
        return self._indexes.generation()

    def index_for(self, base_model_id: int) -> VectorIndex:
        """The FAISS index of one base model's descriptions, up to date with the database."""
        return self._indexes.get(base_model_id)


# built once: a loaded generator runs it before every decode (``forget_deleted``)
_LIVE_IDS = sa.select(AdapterRow.id).where(AdapterRow.id.in_(sa.bindparam("ids", expanding=True)))


def _refuse_twin(s: Session, bm_row: BaseModelRow, sha256: str) -> None:
    twin = s.scalar(
        sa.select(AdapterRow).where(
            AdapterRow.base_model_id == bm_row.id, AdapterRow.sha256 == sha256
        )
    )
    if twin is not None:
        raise Conflict(
            f"these weights are already registered for {bm_row.name} as adapter {twin.id} "
            f"({twin.name}): use that one, or delete it before uploading them again"
        )


def _check_k(k: int) -> None:
    if k < 1 or k > MAX_K:
        raise InvalidInput(f"k must be between 1 and {MAX_K}, got {k}")


def check_provenance(value: Provenance | str) -> Provenance:
    """``value`` as a provenance, or a 400 that lists the allowed ones."""
    try:
        return Provenance(value)
    except ValueError as exc:
        allowed = ", ".join(p.value for p in Provenance)
        raise InvalidInput(f"provenance must be one of {allowed}, got {value!r}") from exc


def open_registry(settings: Settings | None = None) -> Registry:
    return Registry(settings)


__all__ = ["Registry", "Parent", "open_registry"]
