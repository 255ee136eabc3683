"""The late-trajectory statistics of a LoRA being trained (``generator.zoo.trainer``,
``generator.zoo.stacked``)."""

from __future__ import annotations

import torch


class Trajectory:
    """Welford's running mean and variance of the LoRA weights over the late part of
    training, and a few snapshots: the statistics SG-LoRA and ICM-LoRA learn from."""

    def __init__(self, steps: int, trajectory_start: float, snapshots: int) -> None:
        """Over the steps from ``trajectory_start`` (a share of ``steps``) on, keeping
        ``snapshots`` evenly spread copies."""
        self.start = int(steps * trajectory_start)
        late = steps - self.start
        self.snap_at = {
            self.start + round(i * (late - 1) / max(1, snapshots - 1)) for i in range(snapshots)
        }
        self.mean: dict[str, torch.Tensor] = {}
        self.m2: dict[str, torch.Tensor] = {}
        self.count = 0
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def add(self, step: int, weights: dict[str, torch.Tensor]) -> None:
        """The weights after ``step`` (a fresh copy, kept as a snapshot where one is due);
        steps before the late part are ignored."""
        if step < self.start:
            return
        self.count += 1
        for k, v in weights.items():
            if k not in self.mean:
                self.mean[k], self.m2[k] = v.clone(), torch.zeros_like(v)
            else:
                delta = v - self.mean[k]
                self.mean[k] += delta / self.count
                self.m2[k] += delta * (v - self.mean[k])
        if step in self.snap_at:
            self.snapshots.append(weights)

    def var(self) -> dict[str, torch.Tensor]:
        return {k: self.m2[k] / max(1, self.count - 1) for k in self.m2}
