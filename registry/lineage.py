"""Lineage both ways: what an adapter was built from (``AdapterRecord.parents``) and
what was built from it (``children``, ``derived_generators``); and the record a
child keeps of a parent that is deleted (``meta["deleted_parents"]``), since the
link row itself goes with the parent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from registry.models import AdapterParentRow, AdapterRow, GeneratorRow, utcnow

if TYPE_CHECKING:
    from registry.records import GeneratorRecord


@dataclass(frozen=True)
class Child:
    """An adapter built from another: generated with it as an expert, transferred from it."""

    adapter_id: int
    name: str
    provenance: str
    role: str
    weight: float | None
    stored: str  # "weights" or "recipe"


def children_of(s: Session, adapter_id: int) -> list[Child]:
    rows = s.execute(
        sa.select(AdapterRow, AdapterParentRow.role, AdapterParentRow.weight)
        .join(AdapterParentRow, AdapterParentRow.child_id == AdapterRow.id)
        .where(AdapterParentRow.parent_id == adapter_id)
        .order_by(AdapterRow.id)
    ).all()
    return [
        Child(
            row.id,
            row.name,
            row.provenance,
            role,
            weight,
            "weights" if row.blob_key is not None else "recipe",
        )
        for row, role, weight in rows
    ]


def generators_trained_on(s: Session, adapter_id: int) -> list[GeneratorRecord]:
    from registry.records import GeneratorRecord

    rows = s.scalars(sa.select(GeneratorRow).order_by(GeneratorRow.id))
    return [GeneratorRecord.of(g) for g in rows if adapter_id in (g.training_adapter_ids or [])]


def remember_deleted_parent(s: Session, parent: AdapterRow) -> None:
    """Before ``parent`` and its links go: each child notes it in its meta."""
    links = s.scalars(sa.select(AdapterParentRow).where(AdapterParentRow.parent_id == parent.id))
    for link in links:
        child = s.get(AdapterRow, link.child_id)
        if child is None or child.id == parent.id:
            continue
        note: dict[str, Any] = {
            "adapter_id": parent.id,
            "name": parent.name,
            "description": parent.description,
            "role": link.role,
            "weight": link.weight,
            "sha256": parent.sha256,
            "deleted_at": _iso(utcnow()),
        }
        meta = dict(child.meta or {})
        meta["deleted_parents"] = [*meta.get("deleted_parents", []), note]
        child.meta = meta


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds")
