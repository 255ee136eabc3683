"""Plain records the registry returns: no ORM objects escape the service."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from registry.models import AdapterRow, ApiKeyRow, BaseModelRow, GeneratorRow, JobRow


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


@dataclass(frozen=True)
class BaseModelRecord:
    id: int
    name: str
    source: str
    architecture: str
    num_layers: int
    hidden_size: int
    num_linear_layers: int
    created_at: datetime

    @classmethod
    def of(cls, row: BaseModelRow) -> BaseModelRecord:
        return cls(
            id=row.id,
            name=row.name,
            source=row.source,
            architecture=row.architecture,
            num_layers=row.num_layers,
            hidden_size=row.hidden_size,
            num_linear_layers=len(row.linear_shapes),
            created_at=_utc(row.created_at),
        )


@dataclass(frozen=True)
class Parent:
    """A lineage link given when registering a generated or transferred adapter."""

    adapter_id: int
    role: str = "parent"
    weight: float | None = None


@dataclass(frozen=True)
class ParentLink:
    adapter_id: int
    role: str
    weight: float | None


@dataclass(frozen=True)
class AdapterRecord:
    id: int
    name: str
    description: str
    base_model: str
    peft_type: str
    rank: int
    alpha: float
    target_modules: list[Any]
    layout_signature: str
    provenance: str
    sha256: str
    size_bytes: int
    created_at: datetime
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    parents: list[ParentLink] = field(default_factory=list)
    # "weights": kept in the blob store; "recipe": rebuilt from its generator when asked for
    stored: str = "weights"

    @classmethod
    def of(cls, row: AdapterRow, parents: list[ParentLink] | None = None) -> AdapterRecord:
        return cls(
            id=row.id,
            name=row.name,
            description=row.description,
            base_model=row.base_model.name,
            peft_type=row.peft_type,
            rank=row.rank,
            alpha=row.alpha,
            target_modules=list(row.target_modules),
            layout_signature=row.layout_signature,
            provenance=row.provenance,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            created_at=_utc(row.created_at),
            config=dict(row.config),
            metrics=dict(row.metrics or {}),
            meta=dict(row.meta or {}),
            parents=parents or [],
            stored="weights" if row.blob_key is not None else "recipe",
        )


@dataclass(frozen=True)
class GeneratorRecord:
    id: int
    name: str
    base_model: str
    method: str
    sha256: str
    size_bytes: int
    training_adapter_ids: list[int]
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, row: GeneratorRow) -> GeneratorRecord:
        return cls(
            id=row.id,
            name=row.name,
            base_model=row.base_model.name,
            method=row.method,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            training_adapter_ids=[int(i) for i in row.training_adapter_ids],
            hyperparameters=dict(row.hyperparameters or {}),
            metrics=dict(row.metrics or {}),
            created_at=_utc(row.created_at),
        )


@dataclass(frozen=True)
class JobRecord:
    id: int
    kind: str
    params: dict[str, Any]
    state: str
    stage: str | None
    progress: float
    log: str
    error: str | None
    result: dict[str, Any] | None
    attempts: int
    max_attempts: int
    worker: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    artifacts: list[str] = field(default_factory=list)  # names, sorted
    live: dict[str, Any] | None = None  # the latest {"step", "steps", "loss"} it reported

    @classmethod
    def of(cls, row: JobRow, artifacts: list[str] | None = None) -> JobRecord:
        return cls(
            id=row.id,
            kind=row.kind,
            params=dict(row.params or {}),
            state=row.state,
            stage=row.stage,
            progress=float(row.progress),
            log=row.log,
            error=row.error,
            result=None if row.result is None else dict(row.result),
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            worker=row.worker,
            lease_expires_at=_utc_or_none(row.lease_expires_at),
            created_at=_utc(row.created_at),
            started_at=_utc_or_none(row.started_at),
            finished_at=_utc_or_none(row.finished_at),
            updated_at=_utc(row.updated_at),
            artifacts=sorted(artifacts or []),
            live=None if row.live is None else dict(row.live),
        )


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as listings show it: never the secret, nor its hash."""

    id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKeyRow) -> ApiKeyRecord:
        return cls(
            id=row.id,
            name=row.name,
            role=row.role,
            prefix=row.prefix,
            created_at=_utc(row.created_at),
            last_used_at=_utc_or_none(row.last_used_at),
            revoked_at=_utc_or_none(row.revoked_at),
        )


@dataclass(frozen=True)
class SearchHit:
    adapter: AdapterRecord
    score: float  # cosine similarity of the descriptions, in [-1, 1]
