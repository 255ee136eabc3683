"""The generators page's held-out chart: what ``loramint eval generators`` last
measured for a base model (``results/quality-<base>.json`` under
``$LORAMINT_HOME``), every method's mean accuracy over the held-out tasks beside
the bare model and the oracle, each split's share of the oracle's gain with its
bootstrap interval and the paired differences between methods, and the per-task
table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.ui.accuracy_chart import AccuracyChart, Row, accuracy_chart
from generator.quality.heldout import report_path

SPLIT_NAMES = {
    "held_out": "within the training families",
    "new_family": "of a family with no training task",
}


@dataclass(frozen=True)
class GainShares:
    """One split's mean share of the oracle's gain, (m - b) / (o - b), per method, and
    the paired differences, each with its 95 % interval, as text."""

    split: str  # how the page names it
    tasks: int
    shares: list[tuple[str, str]]  # (method, "41 % [20 %, 60 %]")
    differences: list[tuple[str, str]]  # ("sg-lora - nearest", "+5.0 [-3.1, +12.0] points")


@dataclass(frozen=True)
class HeldOut:
    base_model: str
    measured: str  # when the report was written, UTC
    chart: AccuracyChart
    columns: list[str]
    tasks: list[dict[str, Any]]  # one row per task: column -> accuracy
    gains: list[GainShares]  # empty for a report written before the splits were kept


def heldout_reports(results_dir: Path, base_models: list[str]) -> list[HeldOut]:
    """The held-out evaluation of each base model that has one (unreadable files are
    skipped: the page must not fail on a report a newer version wrote)."""
    out = []
    for base_model in base_models:
        path = report_path(results_dir, base_model)
        try:
            report = json.loads(path.read_text())
            out.append(_view(base_model, report, path.stat().st_mtime))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _view(base_model: str, report: dict[str, Any], mtime: float) -> HeldOut:
    columns = [c for c in report["columns"] if isinstance(c, str)]
    means: dict[str, float] = report["mean"]
    relative: dict[str, float] = report.get("relative_to_oracle", {})
    rows = []
    for c in columns:
        kind = "bare" if c == "base" else "oracle" if c == "oracle" else "method"
        share = relative.get(c)
        note = f"{share:.0%} of the oracle" if isinstance(share, int | float) else ""
        label = "bare model" if c == "base" else c
        rows.append(Row(label, float(means[c]), kind, note))
    tasks = [t for t in report["tasks"] if isinstance(t, dict)]
    when = datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")
    plural = "" if len(tasks) == 1 else "s"
    title = f"Mean accuracy over {len(tasks)} held-out task{plural}, {base_model}"
    gains = [_gains(name, split) for name, split in report.get("splits", {}).items()]
    return HeldOut(base_model, when, accuracy_chart(title, rows), columns, tasks, gains)


def _interval(e: dict[str, float], scale: float, fmt: str) -> str:
    low, value, high = (scale * float(e[k]) for k in ("low", "value", "high"))
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _gains(name: str, split: dict[str, Any]) -> GainShares:
    shares = [
        ("bare model" if c == "base" else c, _interval(e, 100, ".0f") + " %")
        for c, e in split["gain_share"].items()
        if c not in ("base", "oracle")
    ]
    differences = [
        (f"{d['method']} - {d['against']}", _interval(d, 100, "+.1f") + " points")
        for d in split.get("differences", [])
    ]
    label = SPLIT_NAMES.get(name, name)
    return GainShares(label, int(split["tasks"]), shares, differences)
