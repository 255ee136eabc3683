"""``loramint gc``: what the blob store and the database disagree on.

- Orphan blobs: stored, but no row refers to them (a process killed between its
  blob write and its commit leaves one). ``apply`` deletes them, under the lock
  every adding transaction takes (``registry.blob_refs``), so a blob an upload
  is about to commit is written again by that upload, never lost.
- Missing blobs: a row refers to a blob that is gone. ``apply`` settles each
  row: a generated adapter whose recipe can still rebuild it goes back to its
  recipe; any other adapter, artifact or job stage output is deleted (a job
  then redoes that stage); a generator is deleted unless recipes still need it
  (then it is only reported).

Without ``apply`` nothing is changed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from registry import blob_refs
from registry.db import transaction
from registry.models import (
    AdapterArtifactRow,
    AdapterRecipeRow,
    AdapterRow,
    GeneratorRow,
    JobArtifactRow,
)

if TYPE_CHECKING:
    from registry.service import Registry


@dataclass
class MissingBlob:
    kind: str  # adapter | artifact | generator | job-artifact
    ref: str  # "12", "12/trajectory", "job 3/stage"
    key: str
    action: str = ""  # what --apply did (or would do)


@dataclass
class GcReport:
    applied: bool
    blobs: int = 0
    orphans: list[str] = field(default_factory=list)
    orphan_bytes: int = 0
    missing: list[MissingBlob] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def collect(registry: Registry, *, apply: bool = False) -> GcReport:
    blobs = registry.blobs
    stored = set(blobs.keys())
    report = GcReport(applied=apply, blobs=len(stored))
    with registry._sessions() as s:
        referenced = {
            key for column in blob_refs.REFERRING for key in s.scalars(sa.select(column)) if key
        }
        adapters = s.execute(
            sa.select(AdapterRow.id, AdapterRow.blob_key, AdapterRecipeRow)
            .outerjoin(AdapterRecipeRow, AdapterRecipeRow.adapter_id == AdapterRow.id)
            .where(AdapterRow.blob_key.is_not(None))
        ).all()
        generators = {g.id: g.sha256 for g in s.scalars(sa.select(GeneratorRow))}
        missing: list[MissingBlob] = []
        for adapter_id, key, recipe in adapters:
            if key is not None and key not in stored:
                rebuildable = recipe is not None and generators.get(recipe.generator_id) == (
                    recipe.generator_sha256
                )
                action = "back to its recipe" if rebuildable else "adapter deleted"
                missing.append(MissingBlob("adapter", str(adapter_id), key, action))
        for art in s.scalars(sa.select(AdapterArtifactRow)):
            if art.blob_key not in stored:
                ref = f"{art.adapter_id}/{art.name}"
                missing.append(MissingBlob("artifact", ref, art.blob_key, "row deleted"))
        for gen in s.scalars(sa.select(GeneratorRow)):
            if gen.blob_key not in stored:
                missing.append(
                    MissingBlob("generator", str(gen.id), gen.blob_key, "generator deleted")
                )
        for job_art in s.scalars(sa.select(JobArtifactRow)):
            if job_art.blob_key not in stored:
                ref = f"job {job_art.job_id}/{job_art.name}"
                missing.append(MissingBlob("job-artifact", ref, job_art.blob_key, "row deleted"))
    report.orphans = sorted(stored - referenced)
    report.orphan_bytes = sum(blobs.size(k) for k in report.orphans)
    for item in missing:
        if item.kind == "generator":
            needed = registry.recipe_adapters(generator_id=int(item.ref))
            if needed:
                item.action = f"kept: {len(needed)} recipe adapters need it"
        report.missing.append(item)
    if apply:
        _drop_orphans(registry, report.orphans)
        for item in report.missing:
            _settle(registry, item)
    return report


def _drop_orphans(registry: Registry, keys: list[str]) -> None:
    with blob_refs.dropping(registry.blobs) as retired, transaction(registry._sessions) as s:
        retired += blob_refs.retire(s, registry.blobs, keys)  # re-checked under the lock


def _settle(registry: Registry, item: MissingBlob) -> None:
    from registry.errors import Conflict, NotFound

    try:
        if item.kind == "adapter":
            if item.action == "back to its recipe":
                with transaction(registry._sessions) as s:
                    blob_refs.lock(s)
                    row = s.get(AdapterRow, int(item.ref))
                    if row is not None and row.blob_key == item.key:
                        row.blob_key = None
            else:
                registry.delete_adapter(int(item.ref))
        elif item.kind == "artifact":
            adapter_id, _, name = item.ref.partition("/")
            _delete(registry, AdapterArtifactRow, item.key, adapter_id=int(adapter_id), name=name)
        elif item.kind == "job-artifact":
            job, _, name = item.ref.removeprefix("job ").partition("/")
            _delete(registry, JobArtifactRow, item.key, job_id=int(job), name=name)
        elif item.kind == "generator" and item.action == "generator deleted":
            registry.delete_generator(int(item.ref))
    except NotFound:
        pass  # deleted meanwhile: settled
    except Conflict as exc:  # e.g. a pinned generator: left for the operator
        item.action = f"kept: {exc}"


def _delete(registry: Registry, model: Any, key: str, **where: Any) -> None:
    """Delete the row of ``model`` matching ``where`` if it still refers to ``key``."""
    with transaction(registry._sessions) as s:
        s.execute(sa.delete(model).filter_by(blob_key=key, **where))
