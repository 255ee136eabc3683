"""bench/embed_precision.py: the mixture it compares, and a run on a small suite."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.embed_precision import mixture
from generator.sandbox import WORDS, tiny_task
from generator.tasks.task import TaskSuite
from registry.embeddings import native_bf16

REPO = Path(__file__).resolve().parents[2]


def test_the_mixture_is_a_softmax_over_each_rows_top_k() -> None:
    sims = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.8, 0.1]])
    dense = mixture(sims, 2, 0.1)
    assert np.allclose(dense.sum(1), 1.0)
    assert (dense[0, [1, 3]] == 0).all() and dense[0, 0] > dense[0, 2] > 0
    assert np.isclose(dense[0, 0] / dense[0, 2], np.exp(4.0))
    assert np.allclose(dense[1, [1, 2]], 0.5) and (dense[1, [0, 3]] == 0).all()
    # a tiny temperature does not overflow
    assert np.isfinite(mixture(sims, 3, 1e-4)).all()


def test_a_run_on_a_small_suite(tmp_path: Path) -> None:
    suite = TaskSuite(tmp_path / "suite")
    tasks = []
    for word in WORDS[:7]:
        task = tiny_task(f"t_{word}", word, held_out=word == WORDS[6])
        wordings = [task.description, f"Is a {word} named?", f"Find the word {word}."]
        meta = {"paraphrases": wordings, "eval_description": f"Does it say {word}?"}
        tasks.append(dataclasses.replace(task, meta=meta))
    suite.write_all(tasks)
    env = {**os.environ, "LORAMINT_HOME": str(tmp_path / "home")}
    run = subprocess.run(
        [sys.executable, "bench/embed_precision.py", "--suite", str(suite.root), "--rounds", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    if not native_bf16():
        assert "nothing to compare" in run.stdout
        return
    assert "| float32 | " in run.stdout and "| bfloat16 (auto) | " in run.stdout
    assert "Fidelity on 6 training tasks" in run.stdout  # the held-out one is not read
    assert "- top-1 neighbours unchanged: " in run.stdout and "| 0.01 | 3 | " in run.stdout


def test_a_missing_suite_is_refused(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "bench/embed_precision.py", "--suite", str(tmp_path / "none")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0 and "no task suite at" in run.stderr
