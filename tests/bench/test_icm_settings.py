"""bench/icm_settings.py's report: each mode paired with the first on the same input."""

from __future__ import annotations

import pytest

from bench.icm_settings import parse_list, report


def test_the_report_pairs_each_mode_with_the_first_on_the_same_input() -> None:
    cells: dict[str, float] = {}
    validation = {"0": ["t0", "t1"], "1": ["t1", "t2"]}
    for seed, names in validation.items():
        for t in names:
            cells[f"{t}|-|bare"], cells[f"{t}|-|oracle"] = 0.5, 0.9
            cells[f"{t}|{seed}|raw|examples"] = 0.5
            cells[f"{t}|{seed}|raw|description"] = 0.7
            cells[f"{t}|{seed}|standardised|examples"] = 0.6
            cells[f"{t}|{seed}|standardised|description"] = 0.7
    cells.pop("t2|1|standardised|description")  # an unfinished pair is left out
    data = {
        "cells": cells, "modes": ["raw", "standardised"], "seeds": [0, 1], "k": 16,
        "validation": validation,
    }  # fmt: skip
    text = report(data)
    assert "3 (task, seed) pairs over 2 training tasks and 2 seeds" in text
    assert "| standardised examples | 0.600 | 25.0% | +0.100 [+0.100, +0.100] |" in text
    assert "| standardised description | 0.700 | 50.0% | +0.000 [+0.000, +0.000] |" in text
    assert "| raw examples | 0.500 | 0.0% | +0.000 [+0.000, +0.000] |" in text
    assert "| t2 | 1 |" not in text
    assert report({**data, "cells": {}}) == "no complete (task, seed) pair yet\n"


def test_bad_lists_stop_the_run() -> None:
    assert parse_list("0, 1,2", int, "--seeds") == [0, 1, 2]
    for bad in ("", "a", "1,,x"):
        with pytest.raises(SystemExit):
            parse_list(bad, int, "--seeds")
