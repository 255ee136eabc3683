"""bench/fewshot_settings.py's sampling of training tasks and its report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.fewshot_settings import bootstrap, keep, parse_configs, report, stratified


@dataclass(frozen=True)
class T:
    name: str
    family: str


def test_the_sample_takes_every_family_before_a_second_task_of_one() -> None:
    tasks = [T(f"{f}{i}", f) for f in "abc" for i in range(4)] + [T("d0", "d")]
    sample = stratified(tasks, 6, seed=0)
    assert len(sample) == len(set(sample)) == 6
    assert {t.family for t in sample[:4]} == {"a", "b", "c", "d"}
    assert stratified(tasks, 6, seed=0) == sample  # a seed fixes it
    assert stratified(tasks, 100, seed=1) and len(stratified(tasks, 100, seed=1)) == 13


def test_configs_are_steps_and_rates_and_bad_ones_stop_the_run() -> None:
    assert parse_configs("20:1e-3, 40:3e-3") == [(20, 1e-3), (40, 3e-3)]
    for bad in ("20", "x:1e-3", "0:1e-3", "20:2", "", "20:1e-3:again", "20:1e-3:refit"):
        with pytest.raises(SystemExit):
            parse_configs(bad)


def test_the_report_pairs_each_configuration_with_the_first() -> None:
    cells: dict[str, float] = {}
    for i, t in enumerate(["t0", "t1", "t2"]):
        cells |= {f"{t}|-|bare": 0.5, f"{t}|-|nearest": 0.6, f"{t}|-|oracle": 0.9}
        cells |= {f"{t}|0|selection": 0.6, f"{t}|0|refine 20:0.001": 0.7}
        cells |= {f"{t}|0|refine 40:0.003": 0.8 + 0.01 * i}
    data = {
        "cells": cells, "configs": [[20, 1e-3], [40, 3e-3]], "tasks": ["t0", "t1", "t2", "t3"],
        "draws": 1, "k": 16, "seed": 0, "families": {"t0": "a", "t1": "a", "t2": "b"},
    }  # fmt: skip
    text = report(data)
    assert text.startswith("3 (task, draw) pairs over 3 training tasks")  # t3 has no cells
    row = next(line for line in text.splitlines() if line.startswith("| refine 40:0.003 |"))
    assert row.split("|")[2:4] == [" 0.810 ", " 77.5% "]
    assert "+0.110 [+0.100, +0.120]" in row
    assert report({**data, "cells": {}}).startswith("no complete")
    # a file from when refinement could refit reports its other configurations
    old = report({**data, "configs": [[20, 1e-3, False], [40, 3e-3, False], [20, 1e-3, True]]})
    assert old == text
    # and so do those from the studies of refinement giving way to selection's pick,
    # keeping a start that answers every example right, starting from the best margin
    # and dropping out the LoRA's inputs
    for removed in ("fallback", "keep", "margin", "dropout"):
        configs = [[20, 1e-3], [40, 3e-3], [20, 1e-3, removed]]
        assert report({**data, "configs": configs}) == text, removed
    # with the LoraHub baseline, its row is paired with the first configuration too
    hub = {f"{t}|0|lorahub": 0.65 for t in ("t0", "t1", "t2")}
    text = report({**data, "cells": cells | hub, "lorahub": True})
    row = next(line for line in text.splitlines() if line.startswith("| lorahub |"))
    assert "-0.050 [-0.050, -0.050]" in row
    assert report({**data, "lorahub": True}).startswith("no complete")  # its cells missing


def test_the_weighting_alone_is_the_reference_and_a_removed_form_is_left_out() -> None:
    assert parse_configs("", allow_none=True) == []
    with pytest.raises(SystemExit, match="or --weighting"):
        parse_configs("")
    cells: dict[str, float] = {}
    for t in ("t0", "t1"):
        cells |= {f"{t}|-|bare": 0.5, f"{t}|-|nearest": 0.6, f"{t}|-|oracle": 0.9}
        cells |= {f"{t}|0|selection": 0.7, f"{t}|0|weighting": 0.6}
        cells |= {f"{t}|0|weighting linear": 0.7}  # a form since taken out
    data = {
        "cells": cells, "configs": [], "weighting": ["softmax", "linear"], "tasks": ["t0", "t1"],
        "draws": 1, "k": 16, "seed": 0, "families": {"t0": "a", "t1": "b"},
    }  # fmt: skip
    text = report(data)
    assert "difference to weighting (95 % CI)" in text and "linear" not in text
    row = next(line for line in text.splitlines() if line.startswith("| selection |"))
    assert "+0.100 [+0.100, +0.100]" in row
    assert "| selection | weighting | oracle |" in text  # the per-task columns
    assert report({**data, "weighting": True}) == text


def test_the_bootstrap_interval_holds_the_mean_and_shrinks_to_it_without_spread() -> None:
    lo, hi = bootstrap(np.array([0.1, -0.1, 0.3, 0.0]), seed=0)
    assert lo < 0.075 < hi
    assert bootstrap(np.array([0.2, 0.2]), seed=0) == pytest.approx((0.2, 0.2))


def test_parts_side_by_side_share_the_results_file(tmp_path: Path) -> None:
    """Two runs of disjoint task lists keep their cells in one file; a file of another
    binding is replaced, not merged."""
    path = tmp_path / "results" / "fewshot-settings-m.json"
    binding = {"generator": 1, "k": 16, "seed": 0}

    def run(tasks: list[str]) -> dict[str, Any]:
        return {
            "binding": binding,
            "cells": {},
            "tasks": tasks,
            "families": {t: "f" for t in tasks},
        }

    a, b = run(["t1", "t2"]), run(["t3"])
    keep(path, a, "t1|-|bare", 0.5)
    keep(path, b, "t3|-|bare", 0.6)
    keep(path, a, "t2|-|bare", 0.7)
    kept = json.loads(path.read_text())
    assert kept["cells"] == {"t1|-|bare": 0.5, "t3|-|bare": 0.6, "t2|-|bare": 0.7}
    assert kept["tasks"] == ["t1", "t2", "t3"] and set(kept["families"]) == {"t1", "t2", "t3"}
    other = run(["t9"]) | {"binding": {**binding, "k": 8}}
    keep(path, other, "t9|-|bare", 0.1)
    assert json.loads(path.read_text())["cells"] == {"t9|-|bare": 0.1}
