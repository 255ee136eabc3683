"""bench/zoo_recipe.py's recipe parsing and its report."""

from __future__ import annotations

import pytest
import torch

from bench.zoo_recipe import kept_recipe, label, parse_recipes, products, report


def test_recipes_are_steps_by_batch_with_an_optional_prompt_cut_and_tf32() -> None:
    assert parse_recipes("40x16, 20x8:128, 40x16@tf32") == [
        (40, 16, None, False), (20, 8, 128, False), (40, 16, None, True),
    ]  # fmt: skip
    text = "40x16,20x8:128,20x8:128@tf32"
    assert [label(r) for r in parse_recipes(text)] == text.split(",")
    bad_ones = ("", "40", "40x", "x16", "0x16", "40x0", "40x16:4", "40x16,40x16", "40*16",
                "40x16@bf16", "40x16@tf32@tf32", "40x16@tf32,40x16@tf32")  # fmt: skip
    for bad in bad_ones:
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


def test_tf32_is_switched_on_only_while_its_recipe_trains_and_only_on_cuda() -> None:
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    plain, tf32 = parse_recipes("40x16,40x16@tf32")
    cpu = torch.device("cpu")
    with products(plain, cpu):
        assert matmul.fp32_precision == before
    with pytest.raises(SystemExit, match="TF32 needs a CUDA device"), products(tf32, cpu):
        pass
    # the setting exists without a GPU, and an error inside still restores it
    with pytest.raises(RuntimeError, match="boom"), products(tf32, torch.device("cuda")):
        assert matmul.fp32_precision == "tf32"
        raise RuntimeError("boom")
    assert matmul.fp32_precision == before


def test_results_from_before_tf32_keep_their_three_field_recipes() -> None:
    assert kept_recipe([40, 16, None]) == (40, 16, None, False)
    assert kept_recipe([40, 16, 128, True]) == (40, 16, 128, True)
