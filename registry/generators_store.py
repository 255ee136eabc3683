"""Trained generator checkpoints as registry objects.

The registry keeps a checkpoint opaquely (a blob plus a ``generators`` row naming
its base model, method, the adapters it was trained on, its hyperparameters and
metrics); loading it is the business of whatever code ``method`` names. The
generator that serves a (base model, method) is the one an operator pinned, or
else the newest (``serving_generator``). Writes
follow the adapters' order: validate, store the blob, commit the row; a failure
leaves no row and no orphaned blob.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from registry import blob_refs
from registry.blobs import BlobStore
from registry.db import transaction
from registry.errors import Conflict, GeneratorNotFound, InvalidInput
from registry.models import BaseModelRow, GeneratorPinRow, GeneratorRow, utcnow
from registry.recipes_store import refuse_if_needed, unmaterialised
from registry.records import GeneratorRecord
from registry.validation import check_json, check_name

# short enough for the default name ``{method}-{sha256[:12]}`` to be a valid name
METHOD_RE = re.compile(r"^[\w][\w.\-]{0,49}$")


class _Host(Protocol):
    """What ``GeneratorStore`` needs from the registry it is mixed into."""

    _sessions: sessionmaker[Session]
    blobs: BlobStore

    def _base_model_row(self, s: Session, name: str) -> BaseModelRow: ...

    def _drop_blobs_if_unused(self, keys: Sequence[str]) -> None: ...

    def recipe_adapters(
        self, *, generator_id: int | None = None, parent_id: int | None = None
    ) -> list[int]: ...

    def materialise_recipes(self, adapter_ids: Sequence[int]) -> list[int]: ...


class GeneratorStore:
    """The generator half of ``Registry`` (kept apart so service.py stays readable)."""

    def add_generator(
        self: _Host,
        checkpoint: bytes,
        *,
        base_model: str,
        method: str,
        name: str | None = None,
        training_adapter_ids: Sequence[int] = (),
        hyperparameters: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> GeneratorRecord:
        """Register a trained generator checkpoint for a registered base model.

        ``training_adapter_ids`` is history, not a reference: deleting one of
        those adapters later leaves the generator and its list untouched.
        """
        if not isinstance(checkpoint, bytes | bytearray | memoryview) or not len(checkpoint):
            raise InvalidInput("a generator checkpoint must be non-empty bytes")
        if not isinstance(method, str) or not METHOD_RE.match(method):
            raise InvalidInput(
                f"generator method {method!r} must be 1-50 letters, digits, '_', '-' or '.'"
            )
        if name is not None:
            check_name("generator", name)
        adapter_ids = _adapter_ids(training_adapter_ids)
        check_json("hyperparameters", hyperparameters)
        check_json("metrics", metrics)

        data = bytes(checkpoint)
        key = self.blobs.put(data)
        try:
            with transaction(self._sessions) as s:
                blob_refs.keep(s, self.blobs, {key: data})  # the lock, first
                bm_row = self._base_model_row(s, base_model)
                final_name = name or f"{method}-{key[:12]}"
                if s.scalar(
                    sa.select(GeneratorRow.id).where(
                        GeneratorRow.base_model_id == bm_row.id, GeneratorRow.name == final_name
                    )
                ):
                    raise Conflict(
                        f"a generator named {final_name!r} already exists for {bm_row.name}"
                    )
                row = GeneratorRow(
                    name=final_name,
                    base_model=bm_row,
                    method=method,
                    sha256=key,
                    blob_key=key,
                    size_bytes=len(data),
                    training_adapter_ids=adapter_ids,
                    hyperparameters=hyperparameters or {},
                    metrics=metrics or {},
                )
                s.add(row)
                s.flush()
                record = GeneratorRecord.of(row)
        except sa.exc.IntegrityError as exc:
            self._drop_blobs_if_unused([key])
            raise Conflict(f"generator could not be registered: {exc.orig}") from exc
        except BaseException:
            self._drop_blobs_if_unused([key])
            raise
        return record

    def get_generator(self: _Host, generator_id: int) -> GeneratorRecord:
        with self._sessions() as s:
            return GeneratorRecord.of(_generator_row(s, generator_id))

    def latest_generator(self: _Host, base_model: str, method: str) -> GeneratorRecord | None:
        """The most recently registered generator of ``method`` for ``base_model``, if any."""
        with self._sessions() as s:
            row = _latest_row(s, base_model, method)
            return None if row is None else GeneratorRecord.of(row)

    def pinned_generator(self: _Host, base_model: str, method: str) -> GeneratorRecord | None:
        """The generator pinned to serve ``method`` for ``base_model``, if one is."""
        with self._sessions() as s:
            row = _pinned_row(s, base_model, method)
            return None if row is None else GeneratorRecord.of(row)

    def serving_generator(self: _Host, base_model: str, method: str) -> GeneratorRecord | None:
        """What generation uses: the pinned generator, else the newest of ``method``."""
        with self._sessions() as s:
            found = s.scalar(_SERVING_ID, {"base_model": base_model, "method": method})
            return None if found is None else GeneratorRecord.of(_generator_row(s, found))

    def serving_generator_id(self: _Host, base_model: str, method: str) -> int | None:
        """``serving_generator``'s id alone: what a generation request asks first."""
        with self._sessions() as s:
            return s.scalar(_SERVING_ID, {"base_model": base_model, "method": method})

    def pinned_generator_ids(self: _Host) -> set[int]:
        with self._sessions() as s:
            return set(s.scalars(sa.select(GeneratorPinRow.generator_id)).all())

    def pin_generator(self: _Host, generator_id: int) -> GeneratorRecord:
        """Serve ``generator_id`` for its base model and method until unpinned or another
        generator is pinned in its place (a newer generator no longer takes over)."""
        try:
            with transaction(self._sessions) as s:
                row = _generator_row(s, generator_id)
                pin = s.get(GeneratorPinRow, (row.base_model_id, row.method))
                if pin is None:
                    s.add(
                        GeneratorPinRow(
                            base_model_id=row.base_model_id, method=row.method, generator_id=row.id
                        )
                    )
                else:
                    pin.generator_id, pin.pinned_at = row.id, utcnow()
                s.flush()
                return GeneratorRecord.of(row)
        except sa.exc.IntegrityError as exc:  # another pin for the same pair at the same time
            raise Conflict(f"generator {generator_id} could not be pinned: {exc.orig}") from exc

    def unpin_generator(self: _Host, generator_id: int) -> GeneratorRecord:
        """Drop ``generator_id``'s pin: the newest generator of its method serves again."""
        with transaction(self._sessions) as s:
            row = _generator_row(s, generator_id)
            pin = s.get(GeneratorPinRow, (row.base_model_id, row.method))
            if pin is None or pin.generator_id != row.id:
                raise Conflict(f"generator {generator_id} is not pinned")
            s.delete(pin)
            return GeneratorRecord.of(row)

    def find_generator(self: _Host, base_model: str, name: str) -> GeneratorRecord | None:
        """The generator called ``name`` for ``base_model`` (names are unique per base model)."""
        with self._sessions() as s:
            row = s.scalar(
                sa.select(GeneratorRow)
                .join(BaseModelRow)
                .where(BaseModelRow.name == base_model, GeneratorRow.name == name)
            )
            return None if row is None else GeneratorRecord.of(row)

    def list_generators(
        self: _Host,
        *,
        base_model: str | None = None,
        method: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[GeneratorRecord]:
        """Generators, newest first."""
        if limit < 1 or limit > 10_000:
            raise InvalidInput(f"limit must be between 1 and 10000, got {limit}")
        if offset < 0:
            raise InvalidInput(f"offset must be >= 0, got {offset}")
        query = sa.select(GeneratorRow).join(BaseModelRow).order_by(GeneratorRow.id.desc())
        if base_model:
            query = query.where(BaseModelRow.name == base_model)
        if method:
            query = query.where(GeneratorRow.method == method)
        with self._sessions() as s:
            rows = s.scalars(query.limit(limit).offset(offset)).all()
            return [GeneratorRecord.of(r) for r in rows]

    def generator_checkpoint(self: _Host, generator_id: int) -> bytes:
        """The checkpoint bytes, verified against their sha256 (``CorruptBlob`` if not)."""
        with self._sessions() as s:
            key = _generator_row(s, generator_id).blob_key
        return self.blobs.get(key)

    def update_generator_metrics(
        self: _Host, generator_id: int, metrics: dict[str, Any]
    ) -> GeneratorRecord:
        """Merge ``metrics`` into a generator's metrics (e.g. held-out evaluation results)."""
        check_json("metrics", metrics)
        with transaction(self._sessions) as s:
            row = _generator_row(s, generator_id)
            row.metrics = {**(row.metrics or {}), **metrics}
            s.flush()
            return GeneratorRecord.of(row)

    def delete_generator(self: _Host, generator_id: int, *, materialise: bool = False) -> None:
        """Delete a generator and its checkpoint; a pinned one is refused (unpin it first,
        so what clients are served never changes as a side effect). So is one that
        adapters kept as recipes still need (``registry.recipes``), unless
        ``materialise``: then their weights are stored first, and the delete goes on."""
        with self._sessions() as s:
            _refuse_pinned(s, _generator_row(s, generator_id))
        if materialise:
            self.materialise_recipes(self.recipe_adapters(generator_id=generator_id))
        with blob_refs.dropping(self.blobs) as retired, transaction(self._sessions) as s:
            blob_refs.lock(s)
            row = _generator_row(s, generator_id)
            _refuse_pinned(s, row)
            refuse_if_needed(
                unmaterialised(s, generator_id=generator_id),
                f"generator {generator_id}",
                "delete with materialise (`loramint generator delete ID --materialise`, "
                "`DELETE /v1/generators/ID?materialise=true`) to store their weights first",
            )
            key = row.blob_key
            s.delete(row)
            retired += blob_refs.retire(s, self.blobs, [key])


def _refuse_pinned(s: Session, row: GeneratorRow) -> None:
    if s.scalar(sa.select(GeneratorPinRow).where(GeneratorPinRow.generator_id == row.id)):
        raise Conflict(
            f"generator {row.id} is pinned to serve {row.method} for "
            f"{row.base_model.name}; unpin it first"
        )


def _latest_row(s: Session, base_model: str, method: str) -> GeneratorRow | None:
    return s.scalar(
        sa.select(GeneratorRow)
        .join(BaseModelRow)
        .where(BaseModelRow.name == base_model, GeneratorRow.method == method)
        .order_by(GeneratorRow.id.desc())
        .limit(1)
    )


def _serving_id() -> sa.Select[int]:
    """The pinned generator's id, else the newest's, in one query (parameters
    ``base_model`` and ``method``)."""
    pin = GeneratorPinRow
    return (
        sa.select(GeneratorRow.id)
        .join(BaseModelRow)
        .outerjoin(
            pin,
            (pin.generator_id == GeneratorRow.id)
            & (pin.base_model_id == GeneratorRow.base_model_id)
            & (pin.method == GeneratorRow.method),
        )
        .where(
            BaseModelRow.name == sa.bindparam("base_model"),
            GeneratorRow.method == sa.bindparam("method"),
        )
        .order_by(pin.generator_id.is_(None), GeneratorRow.id.desc())
        .limit(1)
    )


# built once: every generation request runs it, and building it costs more than that
_SERVING_ID = _serving_id()


def _pinned_row(s: Session, base_model: str, method: str) -> GeneratorRow | None:
    return s.scalar(
        sa.select(GeneratorRow)
        .join(GeneratorPinRow, GeneratorPinRow.generator_id == GeneratorRow.id)
        .join(BaseModelRow, BaseModelRow.id == GeneratorPinRow.base_model_id)
        .where(BaseModelRow.name == base_model, GeneratorPinRow.method == method)
    )


def _generator_row(s: Session, generator_id: int) -> GeneratorRow:
    row = s.get(GeneratorRow, generator_id)
    if row is None:
        raise GeneratorNotFound(f"no generator with id {generator_id}")
    return row


def _adapter_ids(values: Sequence[int]) -> list[int]:
    """Plain ints (numpy integers too) for the JSON list; anything else is refused."""
    if isinstance(values, str | bytes):
        raise InvalidInput("training_adapter_ids must be a sequence of adapter ids")
    ids: list[int] = []
    for value in values:
        if isinstance(value, bool):
            raise InvalidInput(f"training adapter id {value!r} is not an integer")
        try:
            ids.append(operator.index(value))
        except TypeError as exc:
            raise InvalidInput(f"training adapter id {value!r} is not an integer") from exc
    return ids
