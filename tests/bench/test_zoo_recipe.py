"""bench/zoo_recipe.py's recipe parsing and its report."""

from __future__ import annotations

import pytest

from bench.zoo_recipe import label, parse_recipes, report


def test_recipes_are_steps_by_batch_with_an_optional_prompt_cut() -> None:
    assert parse_recipes("40x16, 20x8:128") == [(40, 16, None), (20, 8, 128)]
    assert [label(r) for r in parse_recipes("40x16,20x8:128")] == ["40x16", "20x8:128"]
    for bad in ("", "40", "40x", "x16", "0x16", "40x0", "40x16:4", "40x16,40x16", "40*16"):
        with pytest.raises(SystemExit):
            parse_recipes(bad)


def test_the_report_pairs_each_recipe_with_the_first_over_complete_tasks() -> None:
    cells = {}
    for i, t in enumerate(["a", "b", "c"]):
        cells[f"{t}|bare"] = {"accuracy": 0.5}
        cells[f"{t}|40x16"] = {"accuracy": 0.9, "seconds": 100.0}
        cells[f"{t}|20x8"] = {"accuracy": 0.8 + 0.01 * i, "seconds": 25.0}
    cells["d|bare"] = {"accuracy": 0.5}  # no recipe scored yet: left out
    data = {
        "cells": cells, "seed": 0, "recipes": [[40, 16, None], [20, 8, None]],
        "tasks": ["a", "b", "c", "d"], "families": {"a": "f", "b": "f", "c": "g", "d": "g"},
    }  # fmt: skip
    text = report(data)
    assert text.startswith("3 training tasks of 2 families")
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| 100.0% | +0.000 [+0.000, +0.000] | 100 | 1.00x |" in rows["| 40x16"]
    assert "| 0.810 | 77.5% | -0.090 [" in rows["| 20x8"] and rows["| 20x8"].endswith(
        "| 25 | 4.00x |"
    )
    assert "| d |" not in text
    assert report({**data, "tasks": ["d"]}) == "no task has every recipe scored yet\n"
