"""The job worker as a real process: a SIGKILL in the middle of a generator
training job, a restarted worker takes the job over when its lease runs out,
and the job ends with exactly one registered generator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from api.cli_service import result_summary
from api.worker import HANDLERS, JobContext, run_one
from generator.sandbox import build_world
from registry.embeddings import MiniLMEmbedder
from registry.service import Registry
from tests.worlds import cli_env, wait_for


def test_killed_worker_job_resumes_with_one_result(
    tmp_path: Path, tiny_base: Path, embedder: MiniLMEmbedder
) -> None:
    world = build_world(tmp_path, embedder=embedder, base=tiny_base)
    reg = world.registry
    env = cli_env(world.settings, LORAMINT_JOB_LEASE_S="4")
    params = {"base_model": world.base, "config": {"method": "sg-lora", "steps": 600}}
    job = reg.submit_job("train-generator", params)
    cmd = [sys.executable, "-m", "api.cli", "worker", "--poll", "0.2"]
    first = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: reg.get_job(job.id).stage == "training" and reg.get_job(job.id).progress > 0,
            240,
            "the job to be training",
        )
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    killed = reg.get_job(job.id)
    assert killed.state == "running" and killed.attempts == 1
    # the step and loss it had reached (the job page and `jobs show` print them)
    assert killed.live is not None and killed.live["steps"] == 600
    assert 1 <= killed.live["step"] <= 600 and killed.live["loss"] is not None
    assert reg.list_generators(base_model=world.base) == []
    # a new worker takes the job over once the dead worker's lease (4 s) runs out
    second = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: reg.get_job(job.id).state in ("succeeded", "failed"), 600, "the job to end"
        )
    finally:
        second.terminate()
        second.wait(timeout=60)
    final = reg.get_job(job.id)
    assert final.state == "succeeded", final.error
    assert final.attempts == 2 and "lost its lease" not in (final.error or "")
    gens = reg.list_generators(base_model=world.base)
    assert final.result is not None
    assert [g.id for g in gens] == [final.result["generator_id"]]
    reg.close()


def test_a_job_that_keeps_failing_ends_failed_with_the_reason(registry: Registry) -> None:
    calls = []

    def broken(ctx: JobContext) -> dict[str, Any]:
        calls.append(ctx.job.attempts)
        raise RuntimeError("disk on fire")

    job = registry.submit_job("train-generator", {"x": 1}, max_attempts=2)
    for _ in range(3):
        run_one(registry, "w1", {"train-generator": broken})
    final = registry.get_job(job.id)
    assert final.state == "failed" and "disk on fire" in (final.error or "")
    assert calls == [1, 2]


def test_following_a_job_stops_when_its_run_here_fails_and_waits_for_a_retry(
    registry: Registry,
) -> None:
    from api.cli_transfer import follow

    def broken(ctx: JobContext) -> dict[str, Any]:
        raise RuntimeError("disk on fire")

    job = registry.submit_job("transfer", {"x": 1}, max_attempts=3)
    final = follow(registry, job.id, quiet=True, poll=0.05, handlers={"transfer": broken})
    assert final.state == "queued" and final.attempts == 1  # not followed forever
    assert "disk on fire" in (final.error or "")


def test_bad_parameters_fail_at_once(registry: Registry) -> None:
    job = registry.submit_job("train-generator", {"config": {"method": "nonsense"}})
    run_one(registry, "w1", HANDLERS)
    final = registry.get_job(job.id)
    assert final.state == "failed" and final.attempts == 1
    assert "method must be one of" in (final.error or "")


@pytest.mark.parametrize(
    ("result", "line"),
    [
        (None, ""),
        ({"adapter_id": 8, "adapter_name": "zoo-cat-trans-job1", "stages": {"x": 1}},
         "adapter 8 (zoo-cat-trans-job1)"),
        ({"generator_id": 3, "val_rel_error": 0.5}, "generator 3"),
        ({"adapters": {"cat": 1, "dog": 2}, "tasks": 2}, "2 adapters"),
        ({"note": "x" * 100}, '{"note": "' + "x" * 49 + "…"),
    ],
)  # fmt: skip
def test_jobs_list_shows_one_line_per_result(result: dict[str, Any] | None, line: str) -> None:
    assert result_summary(result) == line
