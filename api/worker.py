"""The job worker: claims jobs from the registry and runs them.

``loramint worker`` runs this loop in its own process; ``loramint serve``
also runs one in a background thread unless told not to. A job's code reports
progress through ``JobContext.progress``, which also renews the job's lease:
when the lease is lost (the job was cancelled, or another worker took it
over after this one stalled) the next report raises ``Conflict`` and the job
stops. A job that raises is retried until its attempts run out, then failed
with the reason.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from registry.errors import Conflict, InvalidInput, LoramintError
from registry.records import JobRecord
from registry.service import Registry
from registry.settings import HEARTBEAT_SECONDS, JobSettings

log = logging.getLogger("loramint.worker")


@dataclass
class JobContext:
    registry: Registry
    job: JobRecord
    worker: str
    lease: float = JobSettings().lease_seconds
    _last: float = field(default=0.0)

    def progress(
        self,
        fraction: float | None = None,
        *,
        stage: str | None = None,
        log_line: str | None = None,
        force: bool = False,
        live: dict[str, Any] | None = None,
    ) -> None:
        """Report progress (at most every few seconds unless ``force``); renews the lease.
        ``live``: the latest training figures (``{"step", "steps", "loss"}``)."""
        now = time.monotonic()
        quiet = not force and stage is None and log_line is None
        if quiet and now - self._last < HEARTBEAT_SECONDS:
            return
        self._last = now
        self.job = self.registry.heartbeat(
            self.job.id,
            self.worker,
            progress=None if fraction is None else max(0.0, min(1.0, fraction)),
            stage=stage,
            log=log_line,
            lease_seconds=self.lease,
            live=live,
        )

    def artifact(self, name: str) -> bytes | None:
        """A stage output saved by an earlier attempt of this job, if any."""
        return self.registry.job_artifact(self.job.id, name)

    def save(self, name: str, data: bytes) -> None:
        self.registry.put_job_artifact(self.job.id, name, data)


Handler = Callable[[JobContext], dict[str, Any]]


def train_generator_job(ctx: JobContext) -> dict[str, Any]:
    from generator.fit.config import GeneratorConfig
    from generator.fit.train import train_generator

    p = ctx.job.params
    config = GeneratorConfig.from_params(p.get("config", {}))
    base_model = p.get("base_model", "smollm2-135m-instruct")
    name = p.get("name") or f"{config.method}-job{ctx.job.id}"
    # exactly one result: an earlier attempt that registered before it was killed wins
    earlier = ctx.registry.find_generator(base_model, name)
    if earlier is not None:
        ctx.progress(1.0, stage="registered", log_line=f"generator {earlier.id} (earlier attempt)")
        return {"generator_id": earlier.id}
    ctx.progress(0.0, stage="loading experts")

    def on_step(step: int, total: int, loss: float) -> None:
        live = {"step": step, "steps": total, "loss": loss}
        if step == 1:
            ctx.progress(0.0, stage="training", force=True, live=live)
        ctx.progress(step / total, live=live, force=step == total)

    rec, metrics = train_generator(
        ctx.registry,
        base_model,
        config,
        name=name,
        on_progress=lambda m: ctx.progress(log_line=m),
        on_step=on_step,
    )
    ctx.progress(1.0, stage="registered", log_line=f"generator {rec.id}")
    return {"generator_id": rec.id, "val_rel_error": metrics.get("val_rel_error")}


def transfer_job(ctx: JobContext) -> dict[str, Any]:
    """Trans-LoRA: stages checkpoint as job artifacts; a retry resumes after the last one."""
    from generator.transfer.job import run_transfer

    return run_transfer(ctx.registry, ctx.job.id, ctx.job.params, ctx)


def build_zoo_job(ctx: JobContext) -> dict[str, Any]:
    """A zoo build; resumable by construction (a task whose adapter is registered is skipped)."""
    from pathlib import Path

    from generator.tasks.task import TaskSuite
    from generator.zoo.build import build_zoo
    from generator.zoo.trainer import TrainConfig

    p = ctx.job.params
    try:
        steps, rank = int(p.get("steps", 40)), int(p.get("rank", 8))
        config = TrainConfig(
            steps=steps,
            batch_size=int(p.get("batch_size", 16)),
            lr=float(p.get("lr", 2e-3)),
            rank=rank,
            alpha=2.0 * rank,
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"bad zoo build parameters: {exc}") from None
    root = Path(p["suite"]) if p.get("suite") else ctx.registry.settings.tasks_dir / "default"
    suite = TaskSuite(root)
    if not suite.exists():
        raise InvalidInput(f"no task suite at {root}: run `loramint tasks build`")
    tasks = suite.select(p.get("tasks") or None)
    at = {"task": 0, "of": max(1, len(tasks))}

    def on_task(task: Any, i: int, n: int) -> None:
        at.update(task=i, of=n)
        stage = f"training {task.name}"[:100]
        ctx.progress(i / n, stage=stage, log_line=f"task {i + 1}/{n}: {task.name}")

    def on_step(step: int, loss: float) -> None:
        live = {"step": step + 1, "steps": steps, "loss": loss}
        ctx.progress((at["task"] + (step + 1) / steps) / at["of"], live=live)

    entries = build_zoo(
        ctx.registry,
        tasks,
        base_model=str(p.get("base_model", "smollm2-135m-instruct")),
        config=config,
        evaluate=bool(p.get("evaluate", True)),
        on_task=on_task,
        on_step=on_step,
        on_progress=lambda m: ctx.progress(log_line=m),
        device=str(p.get("device", "auto")),
    )
    ctx.progress(1.0, stage="registered", log_line=f"{len(entries)} zoo adapters")
    return {
        "adapters": {e.task: e.adapter_id for e in entries},
        "trained_now": sum(e.trained_now for e in entries),
    }


def generate_job(ctx: JobContext) -> dict[str, Any]:
    """A few-shot generation whose training went over the request's time budget."""
    import msgspec

    from api.dto import GenerateIn
    from api.routes import generation_request
    from generator.serve.generate import generate_adapters

    try:
        data = msgspec.convert(ctx.job.params, GenerateIn)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"bad generation job parameters: {exc}") from exc
    request = generation_request(ctx.registry, data)
    ctx.progress(0.0, stage="adapting", log_line=f"{len(request.examples)} examples")
    [(rec, made)] = generate_adapters(
        ctx.registry, [request], base_model=data.base_model, method=data.method,
        generator_id=data.generator_id, on_progress=lambda m: ctx.progress(log_line=m),
    )  # fmt: skip
    ctx.progress(1.0, stage="registered", log_line=f"adapter {rec.id} ({rec.name})")
    return {"adapter_id": rec.id, "adapter_name": rec.name, "fewshot": made.fewshot}


HANDLERS: dict[str, Handler] = {
    "generate": generate_job,
    "train-generator": train_generator_job,
    "transfer": transfer_job,
    "build-zoo": build_zoo_job,
}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def run_one(
    registry: Registry, name: str, handlers: dict[str, Handler], *, job_id: int | None = None
) -> JobRecord | None:
    """Claim and run one job (``job_id`` only, if given); returns it (None when there
    is nothing to claim)."""
    lease = registry.settings.jobs.lease_seconds
    job = registry.claim_job(name, kinds=list(handlers), job_id=job_id, lease_seconds=lease)
    if job is None:
        return None
    log.info("job started", extra={"job_id": job.id})
    ctx = JobContext(registry, job, name, lease)
    try:
        result = handlers[job.kind](ctx)
    except Conflict as exc:  # lease lost or cancelled: someone else owns the job now
        log.warning("job %s stopped: %s", job.id, exc, extra={"job_id": job.id})
        return registry.get_job(job.id)
    except LoramintError as exc:  # bad parameters do not get better by retrying
        return registry.fail_job(job.id, name, str(exc), retry=False)
    except Exception as exc:
        log.exception("job failed", extra={"job_id": job.id})
        detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        return registry.fail_job(job.id, name, detail, retry=True)
    return registry.finish_job(job.id, name, result=result)


def run_worker(
    registry: Registry,
    *,
    name: str | None = None,
    handlers: dict[str, Handler] | None = None,
    poll: float = 1.0,
    stop: threading.Event | None = None,
    once: bool = False,
) -> int:
    """Run jobs until ``stop`` is set (or, with ``once``, until the queue is empty)."""
    name = name or worker_name()
    handlers = handlers or HANDLERS
    stop = stop or threading.Event()
    done = 0
    while not stop.is_set():
        job = run_one(registry, name, handlers)
        if job is None:
            if once:
                break
            stop.wait(poll)
        else:
            done += 1
    return done


def start_background_worker(registry: Registry) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(
        target=run_worker, args=(registry,), kwargs={"stop": stop}, daemon=True, name="worker"
    )
    thread.start()
    return thread, stop
