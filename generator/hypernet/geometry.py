"""Distances between LoRA adapters as the functions they add, dW = B A.

Element-wise distances between (A, B) pairs miss that two factorisations can
give one update. The Frobenius inner product of two updates never forms the
(out x in) matrices: <B1 A1, B2 A2> = tr((B1^T B2)(A2 A1^T)), r x r products.
"""

from __future__ import annotations

import torch

from generator.hypernet.layout import LoraLayout, Rows


def _factors(layout: LoraLayout, module: str, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    b = layout.of(module)[0]
    L = rows.shape[0]
    a = rows[:, : b.size_a].reshape(L, b.rank, b.fan_in)  # (L, r, in)
    bb = rows[:, b.size_a :].reshape(L, b.fan_out, b.rank)  # (L, out, r)
    return a.double(), bb.double()


def delta_inner(layout: LoraLayout, x: Rows, y: Rows) -> torch.Tensor:
    """Sum over blocks of <B_x A_x, B_y A_y> (a 0-d float64 tensor)."""
    total = torch.zeros((), dtype=torch.float64)
    for m in layout.modules:
        ax, bx = _factors(layout, m, x[m])
        ay, by = _factors(layout, m, y[m])
        btb = bx.transpose(1, 2) @ by  # (L, r, r)
        aat = ay @ ax.transpose(1, 2)  # (L, r, r)
        total = total + (btb * aat.transpose(1, 2)).sum()
    return total


def delta_relative_error(layout: LoraLayout, pred: Rows, true: Rows) -> float:
    """||dW_pred - dW_true||^2 / ||dW_true||^2 over all blocks."""
    tt = delta_inner(layout, true, true)
    err = delta_inner(layout, pred, pred) - 2 * delta_inner(layout, pred, true) + tt
    return float((err / tt.clamp(min=1e-30)).clamp(min=0))
