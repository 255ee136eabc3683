"""Task suite v2: counts, formats, paraphrases, the held-out split, determinism and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from generator.tasks.suite import build_default_suite
from generator.tasks.suite.v2 import (
    FORMATS,
    HELD_SHARE,
    TRAIN_ONLY,
    build_suite_v2,
    split_table,
    v2_tasks,
)
from generator.tasks.suite.v2_families import NEW_FAMILY
from generator.tasks.task import MANIFEST, Task, TaskSuite

REPO = Path(__file__).resolve().parents[3]
# sha256 over (file name, bytes) of the default suite built with seed 0, taken before
# suite v2 moved shared corpus code around: the default suite must not change.
DEFAULT_SUITE_SHA256 = "8b2ff62d2861fa23051ad51856407cd293f5e4c489041c8a55653df0c4576dd9"


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LORAMINT_HOME": str(home), "PYTHONHASHSEED": "12345"}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Task]]:
    root = tmp_path_factory.mktemp("v2")
    return root, build_suite_v2(root, seed=0)


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh LORAMINT_HOME into which the CLI built suite v2 (seed 0) in another process."""
    home = tmp_path_factory.mktemp("home")
    done = _cli("tasks", "build", "--suite", "v2", home=home)
    assert done.returncode == 0, done.stderr
    return home


def _training(tasks: list[Task]) -> list[Task]:
    return [t for t in tasks if t.meta["split"] == "train"]


def test_enough_training_tasks_in_enough_families_and_formats(
    built: tuple[Path, list[Task]],
) -> None:
    _, tasks = built
    training = _training(tasks)
    assert len(training) >= 200
    formats: dict[str, set[str]] = defaultdict(set)
    for task in training:
        formats[task.family].add(task.meta["format"])
    assert len(formats) >= 8, sorted(formats)
    assert all(len(found) >= 2 for found in formats.values()), formats
    assert sum(found == set(FORMATS) for found in formats.values()) >= 8, formats
    assert {t.meta["format"] for t in training} == set(FORMATS)


def test_labels_match_each_format_and_splits_are_balanced(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    for task in tasks:
        fmt = task.meta["format"]
        if fmt == "yes_no":
            assert task.labels == ("yes", "no"), task.name
        elif fmt == "two_labels":
            assert len(task.labels) == 2 and "yes" not in task.labels, task.name
        else:
            assert fmt == "multi" and len(task.labels) >= 3, task.name
        assert 120 <= len(task.train) <= 256 and 60 <= len(task.test) <= 100, task.name
        assert len(set(Counter(e.output for e in task.test).values())) == 1, task.name
        assert not {e.input for e in task.train} & {e.input for e in task.test}, task.name
        assert task.source.strip() and task.licence.strip(), task.name


def test_paraphrases_are_distinct_and_the_eval_wording_is_never_trained_on(
    built: tuple[Path, list[Task]],
) -> None:
    _, tasks = built
    trained_on = {p for t in tasks for p in t.meta["paraphrases"]}
    for task in tasks:
        paraphrases = task.meta["paraphrases"]
        assert len(paraphrases) >= 5 and len(set(paraphrases)) == len(paraphrases), task.name
        assert paraphrases[0] == task.description
        assert task.meta["eval_description"] not in trained_on, task.name
        for wording in [*paraphrases, task.meta["eval_description"]]:
            for label in task.labels:
                assert label.lower() in wording.lower(), (task.name, label, wording)
    assert len({t.description for t in tasks}) == len(tasks)


def test_held_out_draw_is_stratified_and_one_family_is_new(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    for task in tasks:
        assert task.held_out == (task.meta["split"] != "train"), task.name
    by_family: dict[str, Counter[str]] = defaultdict(Counter)
    for task in tasks:
        by_family[task.family][task.meta["split"]] += 1
    new = by_family.pop(NEW_FAMILY)
    assert new["new_family"] >= 5 and set(new) == {"new_family"}, new
    assert sum(c["held_out"] for c in by_family.values()) >= 30
    for family, counts in by_family.items():
        n = counts["train"] + counts["held_out"]
        if family in TRAIN_ONLY:
            assert set(counts) == {"train"}, (family, counts)
            continue
        assert set(counts) == {"train", "held_out"}, (family, counts)
        assert counts["held_out"] == max(1, round(HELD_SHARE * n)), (family, counts)
    assert sum(c["train"] for c in by_family.values()) >= 200


def test_manifest_lists_every_task_with_its_split_and_reads_back(
    built: tuple[Path, list[Task]],
) -> None:
    root, tasks = built
    manifest = json.loads((root / MANIFEST).read_text())
    assert (manifest["suite"], manifest["version"], manifest["seed"]) == ("v2", 2, 0)
    assert [e["name"] for e in manifest["tasks"]] == [t.name for t in tasks]
    for entry in manifest["tasks"]:
        assert entry["family"] and entry["licence"] and entry["held_out"] in (True, False)
        assert {"format", "split", "paraphrases", "eval_description"} <= set(entry["meta"])
    suite = TaskSuite(root)
    for task in tasks[::25]:
        assert suite.load(task.name) == task


def test_cli_build_in_another_process_gives_identical_files(
    built: tuple[Path, list[Task]], cli_home: Path
) -> None:
    first, second = _files(built[0]), _files(cli_home / "tasks" / "v2")
    assert sorted(first) == sorted(second)
    for name, data in first.items():
        assert data == second[name], f"{name} differs between two builds with seed 0"


def test_another_seed_keeps_the_tasks_and_changes_splits_and_held_out(
    built: tuple[Path, list[Task]],
) -> None:
    _, tasks = built
    other = v2_tasks(seed=1)
    assert [t.name for t in other] == [t.name for t in tasks]
    assert all(a.test != b.test for a, b in zip(tasks, other, strict=True))
    held = {t.name for t in tasks if t.meta["split"] == "held_out"}
    assert held != {t.name for t in other if t.meta["split"] == "held_out"}


def test_the_default_suite_is_unchanged(tmp_path: Path) -> None:
    build_default_suite(tmp_path, seed=0)
    digest = hashlib.sha256()
    for name, data in _files(tmp_path).items():
        digest.update(name.encode())
        digest.update(data)
    assert digest.hexdigest() == DEFAULT_SUITE_SHA256


def test_cli_lists_the_v2_suite(cli_home: Path) -> None:
    done = _cli("tasks", "list", "--suite", str(cli_home / "tasks" / "v2"), "--json", home=cli_home)
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)
    assert len(entries) >= 235
    assert {e["meta"]["format"] for e in entries} == set(FORMATS)


def test_a_bad_suite_name_lists_the_choices_and_writes_nothing(tmp_path: Path) -> None:
    home, dest = tmp_path / "home", tmp_path / "dest"
    home.mkdir()
    done = _cli("tasks", "build", "--suite", "v9", "--dest", str(dest), home=home)
    assert done.returncode == 2
    assert "unknown task suite 'v9'" in done.stderr and "default, v2" in done.stderr
    assert not dest.exists() and not any(home.iterdir())
    done = _cli("tasks", "build", "--suite", "v9", home=home)
    assert done.returncode == 2 and "choose one of: default, v2" in done.stderr
    assert not any(home.iterdir())


def test_readme_table_is_the_one_the_code_prints(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    assert split_table(tasks) in (REPO / "README.md").read_text()
