"""Execution engines: where the worker runs the jobs it finds in the registry.

- ``local`` (the default): this process claims jobs and runs them one at a
  time (``api.worker.run_worker``).
- ``ray`` (the ``ray`` extra): this process only dispatches. Every claimable
  job becomes one Ray task with the job's resource request
  (``params["resources"]``: ``num_cpus``, default 1, and ``num_gpus``, default
  0); Ray places the tasks on the cluster. The task opens the same registry
  (database URL, blob home, model cache, passed in its runtime environment) and
  runs the same ``run_one`` for that job id, so claims, leases, retries and
  stage checkpoints behave exactly as with local workers: a task that dies is
  a lost worker, and the job is dispatched again once its lease runs out.

Nothing here schedules: Ray does. The dispatcher keeps one task per job in
flight and asks the registry, not its own memory, what is claimable.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

from api.worker import HANDLERS, Handler, JobContext, run_one
from registry.errors import InvalidInput
from registry.records import JobRecord
from registry.service import Registry
from registry.settings import Settings

log = logging.getLogger("loramint.engines")

ENGINES = ("local", "ray")
# the hub switches a Ray task keeps from the dispatcher's environment
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class Resources:
    """What one job asks its engine for (Ray's ``num_cpus`` / ``num_gpus``)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        # a job is a Python process: it always needs some CPU, GPUs or not
        for name, high, open_low in (("num_cpus", 1024.0, True), ("num_gpus", 64.0, False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"{name} must be a number, got {value!r}")
            low_ok = value > 0 if open_low else value >= 0
            if not math.isfinite(value) or not low_ok or value > high:
                span = f"{'(' if open_low else '['}0, {high:g}]"
                raise InvalidInput(f"{name} must be in {span}, got {value!r}")

    @classmethod
    def of(cls, params: dict[str, Any]) -> Resources:
        raw = params.get("resources") or {}
        if not isinstance(raw, dict):
            raise InvalidInput(f"resources must be an object, got {raw!r}")
        unknown = sorted(set(raw) - {"num_cpus", "num_gpus"})
        if unknown:
            raise InvalidInput(f"unknown resources {', '.join(unknown)}: use num_cpus, num_gpus")
        return cls(**raw)

    def as_params(self) -> dict[str, float]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


def task_env(settings: Settings) -> dict[str, str]:
    """Environment a Ray task needs to open the dispatcher's registry: a Ray task is
    another process, which reads its settings as every loramint process does."""
    env = settings.environment()
    env.update({k: os.environ[k] for k in OFFLINE_ENV if k in os.environ})
    return env


def run_job_task(job_id: int) -> dict[str, Any]:
    """Body of one Ray task: run job ``job_id`` from the registry its environment names."""
    import ray

    from registry.settings import apply_offline_environment

    settings = Settings.from_env()
    apply_offline_environment(settings)
    context = ray.get_runtime_context()
    assigned = context.get_assigned_resources()
    name = f"ray:{socket.gethostname()}:{os.getpid()}:{context.get_task_id()}"

    def announced(handler: Handler) -> Handler:
        def run(ctx: JobContext) -> dict[str, Any]:
            ctx.progress(log_line=f"ray task on node {context.get_node_id()[:12]}: {assigned}")
            return handler(ctx)

        return run

    registry = Registry(settings)
    try:
        handlers = {kind: announced(h) for kind, h in HANDLERS.items()}
        job = run_one(registry, name, handlers, job_id=job_id)
    finally:
        registry.close()
    return {"job_id": job_id, "state": None if job is None else job.state}


class RayEngine:
    """Dispatches claimable jobs as Ray tasks (``loramint worker --engine ray``)."""

    def __init__(
        self,
        registry: Registry,
        *,
        address: str | None = None,
        init: dict[str, Any] | None = None,
        handlers: dict[str, Handler] | None = None,
    ) -> None:
        try:
            import ray
        except ImportError as exc:
            raise InvalidInput(
                "the Ray engine needs Ray: pip install 'loramint[ray]' (or `pip install ray`)"
            ) from exc
        self.ray = ray
        self.registry = registry
        self.kinds = sorted(handlers or HANDLERS)
        self.name = f"ray-dispatcher:{socket.gethostname()}:{os.getpid()}"
        self.inflight: dict[int, Any] = {}  # job id -> ObjectRef of its task
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, **(init or {})}
            ray.init(address=address, **kwargs)
        # a task that dies is not retried by Ray: the job's lease decides who goes on
        self.remote = ray.remote(max_retries=0)(run_job_task)
        self.runtime_env = {"env_vars": task_env(registry.settings)}

    def claimable(self) -> list[JobRecord]:
        """Queued jobs, and running ones whose worker lost its lease, oldest first."""
        from registry.models import utcnow

        now = utcnow()
        jobs = [
            j
            for state in ("queued", "running")
            for j in self.registry.list_jobs(state=state, limit=1000)
            if j.kind in self.kinds
            and (state == "queued" or (j.lease_expires_at is not None and j.lease_expires_at < now))
        ]
        return sorted(jobs, key=lambda j: j.id)

    def dispatch(self) -> list[int]:
        """Start a Ray task for every claimable job without one in flight."""
        started = []
        capacity = self.ray.cluster_resources()
        for job in self.claimable():
            if job.id in self.inflight:
                continue
            try:
                res = Resources.of(job.params)
                _check_capacity(res, capacity)
            except InvalidInput as exc:
                self._refuse(job, str(exc))
                continue
            self.inflight[job.id] = self.remote.options(
                num_cpus=res.num_cpus, num_gpus=res.num_gpus, runtime_env=self.runtime_env
            ).remote(job.id)
            log.info("job %s dispatched to Ray with %s", job.id, res, extra={"job_id": job.id})
            started.append(job.id)
        return started

    def reap(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Results of the tasks that have ended (waiting up to ``timeout`` for one)."""
        if not self.inflight:
            return []
        refs = list(self.inflight.values())
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if not ready and timeout > 0:
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
        done: list[dict[str, Any]] = []
        for job_id, ref in list(self.inflight.items()):
            if ref not in ready:
                continue
            del self.inflight[job_id]
            try:
                done.append(self.ray.get(ref))
            except Exception as exc:  # the task itself died: the job's lease will run out
                log.warning("ray task of job %s ended: %s", job_id, exc, extra={"job_id": job_id})
                done.append({"job_id": job_id, "state": None, "error": str(exc)})
        return done

    def run(
        self, *, poll: float = 1.0, stop: threading.Event | None = None, once: bool = False
    ) -> int:
        """Dispatch until ``stop`` (with ``once``: until nothing is claimable or in flight)."""
        stop = stop or threading.Event()
        finished = 0
        while not stop.is_set():
            started = self.dispatch()
            finished += len(self.reap(timeout=poll if self.inflight else 0.0))
            if once and not started and not self.inflight and not self.claimable():
                break
            if not self.inflight:
                stop.wait(poll)
        return finished

    def _refuse(self, job: JobRecord, reason: str) -> None:
        """Fail a job no Ray task can run (bad or unsatisfiable resource request)."""
        held = self.registry.claim_job(
            self.name,
            job_id=job.id,
            kinds=self.kinds,
            lease_seconds=self.registry.settings.jobs.lease_seconds,
        )
        if held is not None:
            self.registry.fail_job(job.id, self.name, f"not run on Ray: {reason}", retry=False)


def _check_capacity(res: Resources, capacity: dict[str, float]) -> None:
    for key, want in (("CPU", res.num_cpus), ("GPU", res.num_gpus)):
        have = float(capacity.get(key, 0.0))
        if want > have:
            raise InvalidInput(
                f"the job asks for {want:g} {key}s; the Ray cluster has {have:g} in all"
            )


def run_engine(
    engine: str,
    registry: Registry,
    *,
    name: str,
    poll: float = 1.0,
    once: bool = False,
    ray_address: str | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run jobs with ``engine`` until stopped; returns how many ended."""
    if engine == "local":
        from api.worker import run_worker

        return run_worker(registry, name=name, poll=poll, once=once, stop=stop)
    if engine == "ray":
        return RayEngine(registry, address=ray_address).run(poll=poll, once=once, stop=stop)
    raise InvalidInput(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
