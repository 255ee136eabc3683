"""bench/scaling.py: sizes, and a run on the sandbox that resumes without training again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.scaling import parse_sizes, report
from generator.sandbox import SandboxWorld
from registry.service import Registry

REPO = Path(__file__).resolve().parents[2]


def test_sizes_are_ascending_whole_numbers_up_to_every_training_task() -> None:
    assert parse_sizes("50, 25,all", 120) == [25, 50, 120]
    assert parse_sizes("all", 3) == [3]
    for bad in ("", "1", "121", "25,25", "25,x", "all,120"):
        with pytest.raises(SystemExit):
            parse_sizes(bad, 120)
    assert report({"results": {}}) == "no size measured yet\n"


def test_scaling_on_the_sandbox_registers_nested_runs_and_resumes(world: SandboxWorld) -> None:
    reg: Registry = world.registry
    env = os.environ | world.environment()
    cmd = [sys.executable, str(REPO / "bench" / "scaling.py"), "--base-model", world.base,
           "--suite", str(world.suite.root), "--sizes", "2,all", "--min-gain", "0.01",
           "--device", "cpu", "--steps", "20"]  # fmt: skip
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    path = world.settings.results_dir / f"scaling-{world.base.replace('/', '_')}.json"
    data = json.loads(path.read_text())
    assert sorted(data["results"], key=int) == ["2", "5"] and data["tasks"] == 1
    small, full = (reg.get_generator(data["results"][n]["generator_id"]) for n in ("2", "5"))
    assert len(small.training_adapter_ids) == 2 and len(full.training_adapter_ids) == 5
    assert set(small.training_adapter_ids) <= set(full.training_adapter_ids)  # nested sets
    two = reg.find_adapter(world.base, "baseline-multitask-2")
    assert two is not None and len(two.meta["tasks"]) == 2
    assert reg.find_adapter(world.base, "baseline-multitask") is not None
    for n in ("2", "5"):
        for c in ("generator", "nearest", "multi-task"):
            e = data["results"][n][c]
            assert e["low"] <= e["value"] <= e["high"]
    assert "| 2 |" in first.stdout and path.with_suffix(".png").exists()

    generators = len(reg.list_generators(base_model=world.base, limit=1000))
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "the generator" not in again.stdout  # every size kept: nothing trained or scored
    assert len(reg.list_generators(base_model=world.base, limit=1000)) == generators
    other = subprocess.run([*cmd, "--seed", "1"], env=env, capture_output=True, text=True)
    assert other.returncode != 0 and "move it away" in other.stderr
    rep = subprocess.run([*cmd, "--report"], env=env, capture_output=True, text=True)
    assert rep.returncode == 0 and rep.stdout == path.with_suffix(".md").read_text()
