"""Base models: resolved (converted once when needed), described and registered.

An upload registers its base model in the adapter's own transaction, or not at
all; ``_described`` therefore writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry import base_models, lora_spec
from registry.db import transaction
from registry.errors import UnknownBaseModel
from registry.models import BaseModelRow
from registry.records import BaseModelRecord
from registry.settings import Settings

Expected = dict[str, tuple[int, int]]  # tensor name -> shape (``LoraSpec.expected_shapes``)
LAYOUTS_KEPT = 64  # (base model, adapter config) pairs whose layouts are kept


class BaseModelStore:
    """The base-model half of ``Registry`` (kept apart so service.py stays readable)."""

    settings: Settings
    _sessions: sessionmaker[Session]
    _base_models: dict[str, tuple[int, dict[str, list[int]]]]
    _layouts: dict[tuple[str, str], tuple[Expected, lora_spec.LoraSpec]]

    def prepare_base_model(
        self, name: str, *, on_progress: Callable[[str], None] | None = None
    ) -> BaseModelRecord:
        """Resolve (converting once if needed) and register base model ``name``."""
        found = self._described(name, on_progress)
        with transaction(self._sessions) as s:
            return BaseModelRecord.of(self._base_model_row_for(s, found))

    def _described(
        self, name: str, on_progress: Callable[[str], None] | None = None
    ) -> base_models.Described:
        """Base model ``name`` resolved and described, registered or not (nothing is
        written: an upload registers its base model with the adapter, or not at all)."""
        resolved = base_models.resolve(name, self.settings, on_progress=on_progress)
        with self._sessions() as s:
            row = s.scalar(sa.select(BaseModelRow).where(BaseModelRow.name == resolved.name))
            if row is not None:
                shapes = base_models.ModelShapes(
                    row.architecture, row.num_layers, row.hidden_size, dict(row.linear_shapes)
                )
                return base_models.Described(resolved, shapes)
        return base_models.Described(resolved, base_models.describe(resolved.path))

    def _base_model_row_for(self, s: Session, found: base_models.Described) -> BaseModelRow:
        """The row of a described base model, added in ``s`` when it has none yet."""
        name = found.resolved.name
        row = s.scalar(sa.select(BaseModelRow).where(BaseModelRow.name == name))
        if row is None:
            shapes = found.shapes
            row = BaseModelRow(
                name=name,
                source=found.resolved.source,
                architecture=shapes.architecture,
                num_layers=shapes.num_layers,
                hidden_size=shapes.hidden_size,
                linear_shapes=shapes.linear_shapes,
            )
            s.add(row)
            s.flush()
        return row

    def base_model_path(self, name: str) -> Path:
        """Local HF folder of a base model (converted on first use)."""
        return base_models.resolve(name, self.settings).path

    def list_base_models(self) -> list[BaseModelRecord]:
        with self._sessions() as s:
            rows = s.scalars(sa.select(BaseModelRow).order_by(BaseModelRow.name)).all()
            return [BaseModelRecord.of(r) for r in rows]

    def _base_model_row(self, s: Session, name: str) -> BaseModelRow:
        row = s.scalar(sa.select(BaseModelRow).where(BaseModelRow.name == name))
        if row is None:
            raise UnknownBaseModel(f"base model {name!r} is not registered")
        return row

    def _base_model_shapes(self, name: str) -> tuple[int, dict[str, list[int]]]:
        """A registered base model's id and linear shapes, read once per registry: its
        row never changes once written (base models are never deleted)."""
        known = self._base_models.get(name)
        if known is None:
            with self._sessions() as s:
                row = self._base_model_row(s, name)
                known = self._base_models[name] = (row.id, dict(row.linear_shapes))
        return known[0], dict(known[1])

    def _adapter_layout(
        self, base_model: str, config: dict[str, Any]
    ) -> tuple[Expected, lora_spec.LoraSpec]:
        """The tensor shapes and spec an adapter of ``config`` has on a registered base
        model: worked out once per (base model, config), as the base model's shapes
        never change (up to ``LAYOUTS_KEPT`` pairs are kept)."""
        key = (base_model, repr(sorted(config.items())))
        known = self._layouts.get(key)
        if known is None:
            spec = lora_spec.spec_from_config(config)
            shapes = self._base_model_shapes(base_model)[1]
            known = self._layouts[key] = (spec.expected_shapes(shapes), spec)
            if len(self._layouts) > LAYOUTS_KEPT:
                self._layouts.clear()
        return known

    def linear_shapes(self, base_model: str) -> dict[str, list[int]]:
        return self._base_model_shapes(base_model)[1]
