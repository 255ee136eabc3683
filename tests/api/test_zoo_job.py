"""A zoo build as a job: the worker's job code trains and registers the zoo,
a second run of the same job skips what is registered, bad parameters fail
at once with the reason."""

from __future__ import annotations

from pathlib import Path

from api.worker import HANDLERS, run_one
from generator.sandbox import tiny_task
from generator.tasks.task import TaskSuite
from registry.service import Registry


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
