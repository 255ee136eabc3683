"""The zoo builder on a tiny random Llama: registration, resumability, a real kill."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from generator.sandbox import tiny_task
from generator.tasks.task import TaskSuite
from generator.zoo.artifacts import SEEDS, TRAJECTORY, load_trajectory
from generator.zoo.build import MIN_GAIN, build_zoo, gains_enough, write_report
from generator.zoo.trainer import TrainConfig
from registry.service import Registry


@pytest.fixture
def suite(tmp_path: Path) -> TaskSuite:
    s = TaskSuite(tmp_path / "suite")
    s.write_all(
        [
            tiny_task("cat", "cat"),
            tiny_task("dog", "dog"),
            # a suite-v2 task of a family no training task has
            dataclasses.replace(
                tiny_task("fish", "fish", held_out=True),
                meta={"split": "new_family", "format": "yes_no"},
            ),
        ]
    )
    return s


def test_build_registers_evaluates_and_skips(
    registry: Registry, tiny_base: Path, suite: TaskSuite
) -> None:
    config = TrainConfig(rank=4, alpha=8, steps=6, batch_size=8, lr=1e-2, snapshots=3)
    seen: list[str] = []
    entries = build_zoo(
        registry,
        suite.select(["cat", "fish"]),
        base_model=str(tiny_base),
        config=config,
        on_task=lambda t, i, n: seen.append(t.name),
    )
    assert seen == ["cat", "fish"] and all(e.trained_now for e in entries)
    rec = registry.get_adapter(entries[0].adapter_id)
    assert rec.name == "zoo-cat" and rec.provenance == "trained" and rec.rank == 4
    assert rec.description == suite.load("cat").description
    assert 0.0 <= rec.metrics["accuracy"] <= 1.0 and 0.0 <= rec.metrics["base_accuracy"] <= 1.0
    assert (
        rec.meta["init"] == {"scheme": "shared-A", "init_seed": 0} and rec.meta["held_out"] is False
    )
    fish = registry.get_adapter(entries[1].adapter_id).meta
    assert fish["held_out"] is True and (fish["split"], fish["format"]) == ("new_family", "yes_no")
    assert "split" not in rec.meta  # a task without one (the default suite) records none
    traj = load_trajectory(registry.artifact(rec.id, TRAJECTORY))
    assert len(traj.snapshots) == 3 and traj.mean.keys() == traj.var.keys()
    seeds = [json.loads(line) for line in registry.artifact(rec.id, SEEDS).decode().splitlines()]
    assert seeds[0] == {
        "input": suite.load("cat").train[0].input,
        "output": suite.load("cat").train[0].output,
    }

    again = build_zoo(registry, suite.select(), base_model=str(tiny_base), config=config)
    assert [e.trained_now for e in again] == [False, True, False]  # only "dog" was missing
    assert registry.count_adapters() == 3

    report = write_report(registry, str(tiny_base))
    data = json.loads(report.read_text())
    summary = data["summary"]
    assert summary["adapters"] == 3 and summary["held_out"] == 1
    fish_row = next(r for r in data["tasks"] if r["task"] == "fish")
    split = summary["splits"]["new_family"]
    fish_gain = fish_row["accuracy"] - fish_row["base_accuracy"]
    # kept for evaluation exactly when its oracle gains at least MIN_GAIN
    assert split["tasks"] == 1 and (split["kept"] == ["fish"]) == gains_enough(fish_gain)
    assert ("fish" in split["dropped"]) == (not gains_enough(fish_gain))
    assert [r["split"] for r in data["tasks"]] == ["new_family", "train", "train"]
    md = report.with_suffix(".md").read_text()
    assert "| fish | mentions | new family |" in md and "| cat | mentions | train |" in md
    assert "Split new_family: " in md and "Split held_out" not in md


def _adapter_names(db: Path) -> list[str]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return [r[0] for r in conn.execute("select name from adapters order by id")]
        except sqlite3.OperationalError:
            return []  # schema not created yet


def test_killed_build_resumes_without_duplicates(
    tmp_path: Path, tiny_base: Path, suite: TaskSuite
) -> None:
    home = tmp_path / "home"
    env = {
        **os.environ,
        "LORAMINT_HOME": str(home),
        "LORAMINT_DATABASE_URL": f"sqlite:///{home / 'r.db'}",
    }
    cmd = [
        sys.executable,
        "-m",
        "api.cli",
        "zoo",
        "build",
        "--base-model",
        str(tiny_base),
        "--suite",
        str(suite.root),
        "--steps",
        "30",
        "--batch-size",
        "8",
        "--rank",
        "4",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(_adapter_names(home / "r.db")) < 1:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # mid-way through the second task
    proc.wait()
    done = _adapter_names(home / "r.db")
    assert 1 <= len(done) < 3, done

    finished = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    names = _adapter_names(home / "r.db")
    assert sorted(names) == ["zoo-cat", "zoo-dog", "zoo-fish"]  # each exactly once
    assert names[: len(done)] == done  # what was committed before the kill was kept
    assert f"{len(done)} already registered" in finished.stdout
    from registry.settings import Settings

    reg = Registry(Settings.from_env(env))
    for rec in reg.list_adapters():
        reg.adapter_files(rec.id)  # blob present and sha256-verified
        assert reg.artifact_names(rec.id) == [SEEDS, TRAJECTORY]


def test_a_gain_that_prints_as_the_threshold_reaches_it() -> None:
    assert MIN_GAIN > 0.64 - 0.54 and gains_enough(0.64 - 0.54)  # 0.09999999999999998
    assert not gains_enough(0.099) and gains_enough(0.3) and not gains_enough(-0.2)
    assert gains_enough(0.05, 0.05) and not gains_enough(0.04, 0.05)
