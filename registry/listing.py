"""The order of an adapter listing: by id (registration order), name, rank,
provenance, creation time, or measured accuracy (adapters never evaluated last,
whichever the direction). One definition serves the REST API, the CLI and the
admin UI, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from registry.errors import InvalidInput
from registry.models import AdapterRow

SORTS = ("id", "name", "rank", "provenance", "created", "accuracy")


def adapter_order(dialect: str, sort: str, descending: bool) -> list[Any]:
    """ORDER BY terms for ``sort``; ties (and unmeasured adapters) fall back to the id."""
    if sort not in SORTS:
        raise InvalidInput(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    if sort == "accuracy":
        value = _accuracy(dialect)
        return [value.is_(None), value.desc() if descending else value.asc(), AdapterRow.id]
    column = {
        "id": AdapterRow.id,
        "name": AdapterRow.name,
        "rank": AdapterRow.rank,
        "provenance": AdapterRow.provenance,
        "created": AdapterRow.created_at,
    }[sort]
    first = column.desc() if descending else column.asc()
    return [first] if sort == "id" else [first, AdapterRow.id]


def _accuracy(dialect: str) -> Any:
    """``metrics["accuracy"]`` where it is a number, else NULL (a string there sorts as
    unmeasured rather than failing the cast)."""
    kind: Any
    number: Any
    if dialect == "postgresql":
        kind = sa.func.json_typeof(AdapterRow.metrics.op("->")("accuracy"))
        number = sa.cast(AdapterRow.metrics.op("->>")("accuracy"), sa.Float)
        is_number = kind == "number"
    else:
        kind = sa.func.json_type(AdapterRow.metrics, "$.accuracy")
        number = sa.func.json_extract(AdapterRow.metrics, "$.accuracy")
        is_number = kind.in_(("real", "integer"))
    return sa.case((is_number, number), else_=sa.null())
