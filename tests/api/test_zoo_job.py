"""A zoo build as a job: the worker's job code trains and registers the zoo,
a second run of the same job skips what is registered, bad parameters fail
at once with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from api.worker import HANDLERS, run_one
from generator.sandbox import tiny_task
from generator.tasks.task import TaskSuite
from registry.service import Registry

ROOT = Path(__file__).resolve().parents[2]


def test_zoo_build_job_registers_and_resumes(
    registry: Registry, tiny_base: Path, tmp_path: Path
) -> None:
    suite = TaskSuite(tmp_path / "suite")
    suite.write_all([tiny_task("cat", "cat"), tiny_task("dog", "dog")])
    params = {
        "tasks": ["cat", "dog"], "base_model": str(tiny_base), "suite": str(suite.root),
        "steps": 3, "batch_size": 8, "lr": 1e-2, "rank": 4, "evaluate": False,
    }  # fmt: skip
    job = registry.submit_job("build-zoo", params)
    done = run_one(registry, "w1", HANDLERS)
    assert done is not None
    assert done.id == job.id and done.state == "succeeded", done.error
    cat = registry.find_adapter(str(tiny_base), "zoo-cat")
    dog = registry.find_adapter(str(tiny_base), "zoo-dog")
    assert cat is not None and dog is not None
    assert done.result == {
        "adapters": {"cat": cat.id, "dog": dog.id},
        "trained_now": 2,
    }
    assert "task 2/2: dog" in done.log and done.progress == 1.0
    registry.submit_job("build-zoo", params)
    again = run_one(registry, "w1", HANDLERS)
    assert again is not None and again.result is not None
    assert again.result["trained_now"] == 0
    assert registry.count_adapters() == 2

    bad = registry.submit_job("build-zoo", {**params, "steps": "many"})
    failed = run_one(registry, "w1", HANDLERS)
    assert failed is not None and failed.id == bad.id and failed.state == "failed"
    assert failed.attempts == 1 and "bad zoo build parameters" in (failed.error or "")


def test_zoo_build_workers_train_tasks_side_by_side(
    registry: Registry, tiny_base: Path, tmp_path: Path
) -> None:
    """`loramint zoo build --workers 2`: each task trained by its own process, two at a
    time, all registered in the one registry (SQLite and PostgreSQL alike), a line per
    task and the report; a rerun finds nothing to train; a bad --workers changes
    nothing."""
    suite = TaskSuite(tmp_path / "suite")
    suite.write_all([tiny_task("cat", "cat"), tiny_task("dog", "dog"), tiny_task("sun", "sun")])
    env = os.environ | registry.settings.environment()
    cli = [sys.executable, "-m", "api.cli", "zoo", "build", "--suite", str(suite.root),
           "--base-model", str(tiny_base), "--steps", "3", "--batch-size", "8", "--rank", "4",
           "--no-eval"]  # fmt: skip

    def build(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *extra], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
        )

    bad = build("--workers", "0")
    assert bad.returncode == 2 and "--workers must be in [1, 64]" in bad.stderr
    assert registry.count_adapters() == 0
    run = build("--workers", "2")
    assert run.returncode == 0, run.stderr
    assert "3 of 3 tasks to train, 2 side by side" in run.stderr
    assert {line.split(":")[0] for line in run.stderr.splitlines() if ": trained (" in line} == {
        "cat", "dog", "sun"
    }  # fmt: skip
    assert "3 tasks, 3 trained now, 0 already registered" in run.stdout
    names = {
        registry.find_adapter(str(tiny_base), f"zoo-{t}") is not None for t in ("cat", "dog", "sun")
    }
    assert names == {True} and registry.count_adapters() == 3
    [report] = [line[8:] for line in run.stdout.splitlines() if line.startswith("report: ")]
    assert Path(report).parent == registry.settings.results_dir and Path(report).exists()
    again = build("--workers", "2")
    assert again.returncode == 0 and "0 of 3 tasks to train" in again.stderr
    assert registry.count_adapters() == 3
