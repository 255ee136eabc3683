"""The held-out report as a markdown table and a PNG.

The functions take a ``heldout.QualityReport`` (typed ``Any`` here: ``heldout``
imports this module, and the package has no import cycles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

QualityReport = Any  # generator.quality.heldout.QualityReport
TaskRow = Any  # generator.quality.heldout.TaskRow

SPLIT_TITLES = {
    "held_out": "Held-out tasks of the training families",
    "new_family": "Tasks of a family no generator trained on",
}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _task_tables(report: QualityReport, rows: list[TaskRow]) -> list[str]:
    cols = [*report.methods, "oracle"]
    acc = [[r.task, *(f"{r.scores[c]:.3f}" for c in report.methods), f"{r.oracle:.3f}"]
           for r in rows]  # fmt: skip
    mean = [float(np.mean([r.scores[c] for r in rows])) for c in report.methods]
    oracle = float(np.mean([r.oracle for r in rows]))
    acc.append(["mean", *(f"**{m:.3f}**" for m in mean), f"**{oracle:.3f}**"])
    shares = [
        [r.task, *(f"{(r.scores[c] - r.scores['base']) / r.gain:.0%}" for c in report.methods)]
        for r in rows
    ]
    return [
        "Accuracy (rank classification on each task's test split):",
        "",
        *_table(["task", *cols], acc),
        "",
        "Share of the oracle's gain over the bare model, (method - bare) / (oracle - bare):",
        "",
        *_table(["task", *report.methods], shares),
    ]


def markdown(report: QualityReport) -> str:
    lines: list[str] = []
    summaries = report.summaries()
    for split, summary in summaries.items():
        rows = [r for r in report.rows if r.split == split]
        title = SPLIT_TITLES.get(split, f"Split {split}")
        if len(summaries) > 1:
            lines += [f"### {title} ({len(rows)} task{'' if len(rows) == 1 else 's'})", ""]
        lines += _task_tables(report, rows)
        plural = "" if summary.tasks == 1 else "s"
        lines += [
            "",
            f"Means over {summary.tasks} task{plural}, 95 % bootstrap intervals over tasks and "
            "test examples:",
            "",
        ]
        table = [
            [
                c,
                f"{summary.accuracy[c].value:.3f} [{summary.accuracy[c].low:.3f}, "
                f"{summary.accuracy[c].high:.3f}]",
                summary.of_oracle[c].percent(),
                summary.gain_share[c].percent(),
            ]
            for c in [*report.methods, "oracle"]
        ]
        lines += _table(["method", "accuracy", "share of the oracle", "share of its gain"], table)
        if summary.differences:
            diffs = [[f"{a} - {b}", e.points()] for (a, b), e in summary.differences.items()]
            lines += ["", "Paired differences in share of the oracle's gain:", ""]
            lines += _table(["difference", "points (95 % CI)"], diffs)
        lines.append("")
    if report.dropped:
        min_gain = report.settings.get("min_gain")
        listed = ", ".join(
            f"{r.task} (bare {r.scores['base']:.3f}, oracle {r.oracle:.3f})" for r in report.dropped
        )
        lines += [f"Dropped, the oracle gains less than {min_gain}: {listed}.", ""]
    return "\n".join(lines)


def plot(report: QualityReport, path: Path) -> None:
    """Per-task accuracy bars above each split's mean share of the oracle's gain with its
    interval. A bare Figure, not pyplot: no global backend switch (a notebook that writes
    a report keeps its inline plots) and nothing left open."""
    from matplotlib.figure import Figure

    cols = [*report.methods, "oracle"]
    tasks = [r.task for r in report.rows] + ["mean"]
    data = np.array([[r.scores[c] for c in report.methods] + [r.oracle] for r in report.rows])
    data = np.vstack([data, data.mean(0)])
    summaries = report.summaries()
    fig = Figure(figsize=(min(24, max(9, len(tasks) * len(cols) / 8)), 9))
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 2))
    width = 0.8 / len(cols)
    x = np.arange(len(tasks))
    for j, c in enumerate(cols):
        top.bar(x + (j - len(cols) / 2 + 0.5) * width, data[:, j], width, label=c)
    top.set_xticks(x, tasks, rotation=40, ha="right", fontsize=7)
    top.set_ylabel("accuracy (rank classification)")
    top.set_ylim(0, 1)
    top.set_title(f"Held-out tasks, {report.base_model}")
    top.legend(fontsize=7, ncol=4, loc="upper left")
    width = 0.8 / max(1, len(summaries))
    x = np.arange(len(report.methods))
    for j, (split, s) in enumerate(summaries.items()):
        est = [s.gain_share[c] for c in report.methods]
        values = np.array([e.value for e in est])
        errors = np.array([[e.value - e.low for e in est], [e.high - e.value for e in est]])
        label = f"{SPLIT_TITLES.get(split, split)} ({s.tasks})"
        offset = (j - len(summaries) / 2 + 0.5) * width
        bottom.bar(x + offset, values, width, yerr=errors, capsize=3, label=label)
    bottom.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set_xticks(x, report.methods, rotation=20, ha="right", fontsize=8)
    bottom.set_ylabel("share of the oracle's gain")
    bottom.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
