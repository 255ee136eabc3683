"""A running transfer: where its stage outputs are kept, how a finished stage is
reused (by a resumed attempt of the same job, or by another job of the same
source adapter with the same key), and the job's progress across stages."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from generator.tasks.evaluation import Evaluator
from generator.transfer.config import TransferConfig
from generator.transfer.source import TRANSFER_KIND, SourceTask
from registry.lora_spec import Tensors
from registry.service import Registry

STAGES = ("synthesize", "discriminator", "filter", "distill", "register")


# the share of the job's progress bar where each stage starts and ends
SPANS = {
    "synthesize": (0.0, 0.15),
    "discriminator": (0.15, 0.4),
    "filter": (0.4, 0.55),
    "distill": (0.55, 0.95),
    "register": (0.95, 1.0),
}


class StageStore(Protocol):
    """Where a running transfer keeps its stage outputs and reports progress
    (``api.worker.JobContext`` is one)."""

    def artifact(self, name: str) -> bytes | None: ...

    def save(self, name: str, data: bytes) -> None: ...

    def progress(
        self,
        fraction: float | None = None,
        *,
        stage: str | None = None,
        log_line: str | None = None,
        force: bool = False,
    ) -> None: ...


@dataclass
class StageOutput:
    """One stage's checkpoint: figures and JSON data in the safetensors header, tensors in it."""

    figures: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    tensors: Tensors = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        meta = {"figures": json.dumps(self.figures), "data": json.dumps(self.data)}
        return save_safetensors({k: v.contiguous() for k, v in self.tensors.items()}, metadata=meta)

    @classmethod
    def from_bytes(cls, raw: bytes) -> StageOutput:
        # safetensors layout: an 8-byte little-endian header length, then the JSON header
        size = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + size]).get("__metadata__") or {}
        return cls(json.loads(meta["figures"]), json.loads(meta["data"]), load_safetensors(raw))


def artifact_name(stage: str) -> str:
    return f"{stage}.safetensors"


def summary(stage: str, figures: dict[str, Any]) -> str:
    shown = ", ".join(
        f"{k} {v}" for k, v in figures.items() if not isinstance(v, dict | list) and v is not None
    )
    return f"{stage}: {shown}"


class Models:
    """The source and target base models, each loaded on first use (a resumed
    job that only registers loads neither), where ``LORAMINT_DEVICE`` says."""

    def __init__(self, registry: Registry, source: str, target: str) -> None:
        self.registry, self.source_name, self.target_name = registry, source, target

    @cached_property
    def source(self) -> Evaluator:
        return self._load(self.source_name)

    @cached_property
    def target(self) -> Evaluator:
        return self._load(self.target_name)

    def _load(self, name: str) -> Evaluator:
        """On the worker's ``LORAMINT_DEVICE``: a GPU when one is visible, by default."""
        path = self.registry.base_model_path(name)
        return Evaluator.from_path(path, device=self.registry.settings.device)


@dataclass
class Run:
    registry: Registry
    job_id: int
    store: StageStore
    source: SourceTask
    target: str
    config: TransferConfig
    models: Models
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stage(self, stage: str, compute: Callable[[], StageOutput]) -> StageOutput:
        start, end = SPANS[stage]
        raw = self.store.artifact(artifact_name(stage))
        if raw is not None:
            out = StageOutput.from_bytes(raw)
            self.store.progress(
                end, stage=stage, log_line=f"{stage}: reused the output of an earlier attempt"
            )
        else:
            self.store.progress(start, stage=stage, log_line=f"{stage}: started", force=True)
            t0 = time.perf_counter()
            out = compute()
            out.figures["wall_seconds"] = round(time.perf_counter() - t0, 2)
            self.store.save(artifact_name(stage), out.to_bytes())
            self.store.progress(end, stage=stage, log_line=summary(stage, out.figures), force=True)
        self.figures[stage] = out.figures
        return out

    def fraction(self, stage: str, done: float) -> None:
        start, end = SPANS[stage]
        self.store.progress(start + (end - start) * max(0.0, min(1.0, done)))

    def on_step(self, stage: str, steps: int) -> Callable[[int, float], None]:
        return lambda step, loss: self.fraction(stage, (step + 1) / steps)


def stage_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def earlier_stage(
    registry: Registry, adapter_id: int, stage: str, key: str, *, job_id: int
) -> tuple[int, StageOutput] | None:
    """The output of ``stage`` that another transfer of this adapter saved under ``key``."""
    name = artifact_name(stage)
    for job in registry.list_jobs(kind=TRANSFER_KIND, limit=1000):
        if job.id == job_id or job.params.get("adapter_id") != adapter_id:
            continue
        if name not in job.artifacts:
            continue
        raw = registry.job_artifact(job.id, name)
        if raw is None:
            continue
        out = StageOutput.from_bytes(raw)
        if out.data.get("key") == key:
            return job.id, out
    return None


def reused(run: Run, stage: str, key: str) -> StageOutput | None:
    """An earlier job's output of ``stage`` with this key, its figures naming that job."""
    found = earlier_stage(run.registry, run.source.record.id, stage, key, job_id=run.job_id)
    if found is None:
        return None
    job_id, out = found
    out.figures = {**out.figures, "reused_from_job": job_id}
    return out
