"""SQLAlchemy 2 ORM models: the registry's source of truth.

Tables: ``base_models``, ``adapters``, ``adapter_recipes`` (how a generated
adapter's weights are rebuilt), ``adapter_parents`` (lineage),
``description_embeddings``, ``generators`` (trained generator checkpoints),
``generator_pins`` (the generator that serves a base model and method),
``jobs`` and ``job_artifacts`` (offline work that workers claim), ``api_keys``
and ``registry_state`` (a generation counter the derived FAISS index compares
against to know when it is stale). Schema changes go through Alembic
(``migrations/``), never ``create_all``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Provenance(StrEnum):
    TRAINED = "trained"
    IMPORTED = "imported"
    GENERATED = "generated"
    TRANSFERRED = "transferred"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ApiKeyRole(StrEnum):
    ADMIN = "admin"
    READER = "reader"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class BaseModelRow(Base):
    """A base language model adapters are trained for."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(300), unique=True)
    # offline package, local path or Hugging Face id the name resolved from
    source: Mapped[str] = mapped_column(Text)
    architecture: Mapped[str] = mapped_column(String(200))
    num_layers: Mapped[int] = mapped_column(Integer)
    hidden_size: Mapped[int] = mapped_column(Integer)
    # {"model.layers.0.self_attn.q_proj": [in_features, out_features], ...}
    linear_shapes: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    adapters: Mapped[list[AdapterRow]] = relationship(back_populates="base_model")


class AdapterRow(Base):
    """One registered LoRA adapter. Its weights live in the blob store under ``blob_key``,
    or, for a generated adapter kept as a recipe (``AdapterRecipeRow``), nowhere:
    ``blob_key`` is NULL and the weights are rebuilt when asked for; ``sha256`` is
    always the weights' checksum."""

    __tablename__ = "adapters"
    __table_args__ = (
        UniqueConstraint("base_model_id", "name", name="uq_adapter_name"),
        # never reuse a deleted id: clients and the derived index key on it
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)
    peft_type: Mapped[str] = mapped_column(String(40))
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float]
    target_modules: Mapped[list[Any]] = mapped_column(JSON)
    # sha256 over the sorted (tensor name, shape) list: adapters with the same
    # signature can be stacked, averaged and generated as one family.
    layout_signature: Mapped[str] = mapped_column(String(64), index=True)
    provenance: Mapped[str] = mapped_column(String(20), default=Provenance.IMPORTED.value)
    # the adapter_config.json as imported (PEFT keys), exported back verbatim
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # free-form provenance details: init scheme, seed, generator id, neighbours...
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    base_model: Mapped[BaseModelRow] = relationship(back_populates="adapters")
    embedding: Mapped[DescriptionEmbeddingRow | None] = relationship(
        back_populates="adapter", cascade="all, delete-orphan", passive_deletes=True
    )


class AdapterRecipeRow(Base):
    """What rebuilds a generated adapter's weights: its generator (id and checkpoint
    checksum) and seed; the description and its embedding are the adapter's own rows.
    Kept after the weights are materialised (then only as history). ``generator_id``
    is no foreign key: the record outlives the generator it names."""

    __tablename__ = "adapter_recipes"

    adapter_id: Mapped[int] = mapped_column(
        ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True
    )
    generator_id: Mapped[int] = mapped_column(Integer, index=True)
    generator_sha256: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    # the version of the decoding code (generator.serve.rebuild.DECODER)
    decoder: Mapped[str] = mapped_column(String(40))


class AdapterParentRow(Base):
    """Lineage: ``child`` was generated or transferred from ``parent``."""

    __tablename__ = "adapter_parents"

    child_id: Mapped[int] = mapped_column(
        ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True
    )
    parent_id: Mapped[int] = mapped_column(
        ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    # e.g. "neighbour", "source"
    role: Mapped[str] = mapped_column(String(40), default="parent")
    weight: Mapped[float | None] = mapped_column(default=None)


class AdapterArtifactRow(Base):
    """A named extra file kept with an adapter (e.g. its training trajectory
    statistics, its seed examples), stored as a blob."""

    __tablename__ = "adapter_artifacts"

    adapter_id: Mapped[int] = mapped_column(
        ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)


class GeneratorRow(Base):
    """A trained generator checkpoint, kept opaquely: its bytes live in the blob
    store under ``blob_key``; ``method`` says which code can load them."""

    __tablename__ = "generators"
    __table_args__ = (
        UniqueConstraint("base_model_id", "name", name="uq_generator_name"),
        # never reuse a deleted id: adapters record the generator they came from
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)
    # e.g. "sg-lora", "icm-lora": not interpreted by the registry
    method: Mapped[str] = mapped_column(String(50))
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # a JSON list, not a link table: the history outlives the adapters it names
    training_adapter_ids: Mapped[list[Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    base_model: Mapped[BaseModelRow] = relationship()


class GeneratorPinRow(Base):
    """The generator an operator chose to serve one (base model, method); without a
    pin the newest generator of the method serves."""

    __tablename__ = "generator_pins"

    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), primary_key=True)
    method: Mapped[str] = mapped_column(String(50), primary_key=True)
    generator_id: Mapped[int] = mapped_column(ForeignKey("generators.id"), index=True)
    pinned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobRow(Base):
    """A unit of offline work (generator training, a zoo build, a transfer). The
    registry stores it and hands it to one worker at a time; it never runs it."""

    __tablename__ = "jobs"
    __table_args__ = (
        # the claim query: the oldest job in a state
        Index("ix_jobs_state_id", "state", "id"),
        # never reuse a deleted id: workers and logs name jobs by it
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # e.g. "train-generator", "transfer": not interpreted by the registry
    kind: Mapped[str] = mapped_column(String(50))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(20), default=JobState.QUEUED.value)
    stage: Mapped[str | None] = mapped_column(String(100), default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    # append-only lines, trimmed to the newest ~64 KiB
    log: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # the latest figures of a running job's training: {"step", "steps", "loss"}
    live: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # claims so far, the re-claim of a lost worker's job included
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    # a running job whose lease has passed belongs to a lost worker: claimable again
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobArtifactRow(Base):
    """A named stage checkpoint of a job, stored as a blob, so that a job resumed
    by another worker skips the stages already done."""

    __tablename__ = "job_artifacts"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKeyRow(Base):
    """An API key. Only the sha256 of the secret is kept: a leaked database
    grants nothing, and a lost secret is replaced, never recovered."""

    __tablename__ = "api_keys"
    # never reuse a revoked key's id: audit trails name keys by it
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    # the secret's first characters, to tell keys apart in listings
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class EndedSessionRow(Base):
    """An admin UI session ended by logging out. The session lives in a signed cookie
    the server cannot recall, so the server remembers the session's id until the
    cookie would have expired anyway (then the row is pruned)."""

    __tablename__ = "ended_sessions"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class DescriptionEmbeddingRow(Base):
    """The embedding of an adapter's description (float32, L2-normalised)."""

    __tablename__ = "description_embeddings"

    adapter_id: Mapped[int] = mapped_column(
        ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(100))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    adapter: Mapped[AdapterRow] = relationship(back_populates="embedding")


class RegistryStateRow(Base):
    """A single row whose ``generation`` is bumped by every change to the set of
    embedded adapters; a derived index built at another generation is stale."""

    __tablename__ = "registry_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
