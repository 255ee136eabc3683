"""Accuracies side by side as horizontal bars (inline SVG, no JS): an adapter
beside the bare model and the oracle on one task (the compare view), or every
method of a held-out evaluation (the generators page).

Each bar is one figure on a 0-1 axis; its kind picks the colour, so the bare
model and the oracle read the same wherever they appear.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDTH = 720
LABEL_W, VALUE_W, RIGHT = 220, 56, 12
ROW, TOP, BOTTOM = 26, 8, 28
# Okabe-Ito: the bare model grey, the oracle black, every other bar blue
COLOURS = {"bare": "#999999", "oracle": "#000000", "adapter": "#0072b2", "method": "#0072b2"}


@dataclass(frozen=True)
class Row:
    label: str
    value: float  # an accuracy in [0, 1]
    kind: str = "adapter"  # "bare", "oracle", "adapter" or "method"
    note: str = ""  # shown after the value, e.g. "92 % of the oracle"
    href: str = ""


@dataclass(frozen=True)
class DrawnRow:
    row: Row
    y: float  # top of the bar
    width: float
    colour: str
    text_y: float


@dataclass(frozen=True)
class AccuracyChart:
    title: str
    width: int
    height: int
    rows: list[DrawnRow]
    x0: float  # where 0 accuracy is
    x1: float  # where 1.0 is
    ticks: list[tuple[float, str]]
    bar_h: float


def accuracy_chart(title: str, rows: list[Row]) -> AccuracyChart:
    """One bar per row on a shared 0-1 axis, in the order given."""
    x0, x1 = float(LABEL_W), float(WIDTH - VALUE_W - RIGHT)
    height = TOP + ROW * len(rows) + BOTTOM
    drawn = []
    for i, row in enumerate(rows):
        value = min(max(row.value, 0.0), 1.0)
        y = TOP + i * ROW + 3
        drawn.append(
            DrawnRow(row, y, (x1 - x0) * value, COLOURS.get(row.kind, COLOURS["adapter"]), y + 14)
        )
    ticks = [(x0 + (x1 - x0) * t / 4, f"{t / 4:.2f}") for t in range(5)]
    return AccuracyChart(title, WIDTH, height, drawn, x0, x1, ticks, ROW - 6)
