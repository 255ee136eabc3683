"""The few-shot harness: draws from the training split only, every method scored into a
resumable file, honest averages, and no silent mixing of runs made differently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generator.quality.fewshot import (
    METHODS,
    Cells,
    FewShotSettings,
    draw,
    evaluate_fewshot,
    markdown,
    summarise,
    write,
)
from generator.sandbox import SandboxWorld, train_generators
from generator.serve.generator import Generator
from generator.tasks.evaluation import Evaluator
from generator.tasks.task import Example, Task
from registry.errors import InvalidInput


def _task(name: str = "t", n: int = 20) -> Task:
    rows = tuple(Example(f"train {i}", "yes" if i % 2 else "no") for i in range(n))
    test = tuple(Example(f"test {i}", "yes" if i % 2 else "no") for i in range(10))
    return Task(
        name=name, family="f", description="Is it odd? Answer yes or no.", labels=("yes", "no"),
        train=rows, test=test, source="test", licence="test",
    )  # fmt: skip


def test_draws_come_from_the_training_split_and_differ_between_draws() -> None:
    task = _task()
    first, again, second = draw(task, 8, 0), draw(task, 8, 0), draw(task, 8, 1)
    assert first == again and first != second
    assert len(first) == 8 and set(first.examples) <= set(task.train)
    assert not set(first.examples) & set(task.test)
    assert first.labels == task.labels
    with pytest.raises(InvalidInput, match="20 training examples"):
        draw(task, 21, 0)


def test_summary_reports_share_of_oracle_and_of_its_gain_over_the_draws() -> None:
    settings = FewShotSettings(ks=(4,), draws=2, methods=("selection",))
    cells = {
        Cells.key("a", None, None, "base"): {"accuracy": 0.5, "seconds": 0},
        Cells.key("a", None, None, "oracle"): {"accuracy": 0.9, "seconds": 0},
        Cells.key("a", None, None, "nearest"): {"accuracy": 0.6, "seconds": 0},
        Cells.key("a", 4, 0, "selection"): {"accuracy": 0.6, "seconds": 1},
        Cells.key("a", 4, 1, "selection"): {"accuracy": 0.8, "seconds": 3},
    }
    summary = summarise(cells, [_task("a")], settings)
    row = summary["ks"]["4"]["selection"]
    assert row["tasks"][0]["draws"] == 2
    assert row["accuracy"] == pytest.approx(0.7)
    assert row["tasks"][0]["std"] == pytest.approx(0.1)
    assert row["share_of_oracle"] == pytest.approx(0.7 / 0.9, abs=1e-4)
    assert row["share_of_gain"] == pytest.approx(0.5)  # (0.7 - 0.5) / (0.9 - 0.5)
    assert row["seconds"] == pytest.approx(2.0)
    assert summary["ks"]["4"]["nearest"]["share_of_gain"] == pytest.approx(0.25)
    assert "sg-lora" not in summary["ks"]["4"]  # never scored: no column
    # against the nearest expert: +0.1, the draws' spread around it (0.6 and 0.8 - 0.6)
    versus = row["vs_nearest"]
    assert versus["value"] == pytest.approx(0.1)
    assert versus["low"] == pytest.approx(0.0) and versus["high"] == pytest.approx(0.2)
    assert "vs_nearest" not in summary["ks"]["4"]["nearest"]
    table = markdown(summary, {"a": 0.9})
    assert "| +0.100 [+0.000, +0.200] |" in table
    # a task without its nearest expert's cell: no paired difference
    alone = {key: c for key, c in cells.items() if not key.endswith("nearest")}
    assert "vs_nearest" not in summarise(alone, [_task("a")], settings)["ks"]["4"]["selection"]


def test_the_paired_difference_resamples_tasks_and_draws() -> None:
    """Two tasks, one where the method beats the nearest expert by 0.2 on every draw and
    one where it loses 0.2: the interval spans both, and its centre is their mean."""
    settings = FewShotSettings(ks=(4,), draws=3, methods=("selection",))
    cells: dict[str, dict[str, float]] = {}
    for name, near, acc in (("a", 0.5, 0.7), ("b", 0.7, 0.5)):
        cells[Cells.key(name, None, None, "base")] = {"accuracy": 0.4, "seconds": 0}
        cells[Cells.key(name, None, None, "oracle")] = {"accuracy": 0.9, "seconds": 0}
        cells[Cells.key(name, None, None, "nearest")] = {"accuracy": near, "seconds": 0}
        for d in range(3):
            cells[Cells.key(name, 4, d, "selection")] = {"accuracy": acc, "seconds": 1}
    versus = summarise(cells, [_task("a"), _task("b")], settings)["ks"]["4"]["selection"]
    assert versus["vs_nearest"]["value"] == pytest.approx(0.0)
    assert versus["vs_nearest"]["low"] == pytest.approx(-0.2)
    assert versus["vs_nearest"]["high"] == pytest.approx(0.2)


def test_a_results_file_made_with_other_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fewshot.json"
    cells = Cells(path, FewShotSettings(refine_steps=20), {"sg-lora": 3})
    cells.put(Cells.key("a", None, None, "base"), 0.5, 0.0)
    # another k or fewer methods only choose which cells are scored: resumable
    again = Cells(path, FewShotSettings(ks=(16,), methods=("refine",)), {"sg-lora": 3})
    assert again.get(Cells.key("a", None, None, "base")) == {"accuracy": 0.5, "seconds": 0.0}
    with pytest.raises(InvalidInput, match="refine_steps 20 -> 30"):
        Cells(path, FewShotSettings(refine_steps=30), {"sg-lora": 3})
    with pytest.raises(InvalidInput, match="generator sg-lora 3 -> 4"):
        Cells(path, FewShotSettings(refine_steps=20), {"sg-lora": 4})
    assert json.loads(path.read_text())["cells"]  # refusing changed nothing


def test_runs_saving_side_by_side_keep_each_others_cells(tmp_path: Path) -> None:
    """Two runs with the same settings save into the same file in turn: neither loses
    the other's cells; a writer made with other settings is refused and changes nothing."""
    path = tmp_path / "fewshot.json"
    settings = FewShotSettings(refine_steps=20)
    first, second = Cells(path, settings, {"sg-lora": 3}), Cells(path, settings, {"sg-lora": 3})
    for i in range(3):
        first.put(Cells.key("a", 16, i, "refine"), 0.5, 1.0)
        second.put(Cells.key("b", 16, i, "refine"), 0.7, 1.0)
    kept = json.loads(path.read_text())["cells"]
    assert len(kept) == 6 and kept[Cells.key("a", 16, 2, "refine")]["accuracy"] == 0.5
    other = Cells(tmp_path / "elsewhere.json", FewShotSettings(refine_steps=30), {"sg-lora": 3})
    other.path = path  # as if it had opened the file before the first run wrote it
    with pytest.raises(InvalidInput, match="refine_steps 20 -> 30"):
        other.put(Cells.key("c", 16, 0, "refine"), 0.1, 1.0)
    assert json.loads(path.read_text())["cells"] == kept


def test_every_method_is_scored_once_and_a_rerun_resumes(
    world: SandboxWorld, tmp_path: Path
) -> None:
    reg = world.registry
    records = train_generators(world, ("sg-lora", "icm-lora"))
    evaluator = Evaluator.from_path(Path(world.base))
    sg = Generator.from_registry(reg, records["sg-lora"], base=evaluator)
    icm = Generator.from_registry(reg, records["icm-lora"], base=evaluator)
    task = world.held_out()
    settings = FewShotSettings(
        ks=(4,), draws=2, refine_steps=2, weighting_steps=2, lorahub_experts=3, lorahub_budget=4
    )
    path = tmp_path / "fewshot.json"
    progress: list[str] = []

    def run() -> dict[str, object]:
        return evaluate_fewshot(
            reg, evaluator, [task], base_model=world.base, sg=sg, icm=icm,
            settings=settings, path=path, on_progress=progress.append,
        )  # fmt: skip

    summary = run()
    cells = json.loads(path.read_text())["cells"]
    expected = {Cells.key(task.name, None, None, m) for m in ("base", "nearest", "sg-lora")}
    expected |= {Cells.key(task.name, None, None, "oracle")}
    expected |= {Cells.key(task.name, 4, i, m) for i in range(2) for m in METHODS}
    assert set(cells) == expected and len(progress) == len(expected)
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in cells.values())
    assert set(summary["ks"]["4"]) == {"base", "nearest", "sg-lora", *METHODS}  # type: ignore[index]

    progress.clear()
    assert run() == summary and progress == []  # every cell was kept: nothing rescored
    write(summary, cells, [task], path)
    table = path.with_suffix(".md").read_text()
    assert "| refine |" in table and "| oracle |" in table and "share of gain" in table
    assert path.with_suffix(".png").stat().st_size > 1000
