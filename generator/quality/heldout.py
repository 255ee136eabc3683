"""Generator quality on held-out tasks, every method and baseline in one run.

For each task: the bare base model; the nearest expert (top-1 by description,
its registered weights); the softmax-weighted mean of the top-K experts'
weights (SG-LoRA's K and tau; its best K >= 2 when SG-LoRA's K is 1); SG-LoRA's
mixture mean mu* alone (its own K, tau and similarity gate); each generator's
adapter; and the oracle (the zoo adapter trained on
the task itself). Relative accuracy = accuracy / oracle accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generator.experts import ExpertBank
from generator.fit.selection import Candidate
from generator.hypernet.methods import SG_LORA
from generator.serve.generator import Generator, Request
from generator.tasks.evaluation import Evaluator
from generator.tasks.task import Task
from generator.zoo.build import ZOO_PREFIX
from registry.blobs import write_atomic
from registry.errors import InvalidInput
from registry.lora_spec import Adapter, parse_weights
from registry.service import Registry

BASELINES = ("base", "nearest", "weighted-mean", "sg-mixture-mean")


@dataclass
class TaskRow:
    task: str
    oracle: float
    scores: dict[str, float] = field(default_factory=dict)
    neighbours: list[str] = field(default_factory=list)
    # column -> how many experts an SG-LoRA generator mixed ("nearest alone", "top-K")
    choices: dict[str, str] = field(default_factory=dict)


@dataclass
class QualityReport:
    base_model: str
    methods: list[str]  # column order
    rows: list[TaskRow]
    generators: dict[str, int]  # column -> generator id
    settings: dict[str, Any]

    def mean(self, column: str) -> float:
        return float(np.mean([r.scores[column] for r in self.rows]))

    def relative(self, column: str) -> float:
        """Mean over tasks of accuracy / oracle accuracy."""
        return float(np.mean([r.scores[column] / r.oracle for r in self.rows if r.oracle > 0]))

    def to_json(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "generators": self.generators,
            "settings": self.settings,
            "columns": [*self.methods, "oracle"],
            "tasks": [
                {
                    "task": r.task,
                    **r.scores,
                    "oracle": r.oracle,
                    "neighbours": r.neighbours,
                    "choices": r.choices,
                }
                for r in self.rows
            ],
            "mean": {c: self.mean(c) for c in self.methods}
            | {"oracle": float(np.mean([r.oracle for r in self.rows]))},
            "relative_to_oracle": {c: self.relative(c) for c in self.methods},
        }

    def markdown(self) -> str:
        cols = [*self.methods, "oracle"]
        lines = [
            "| task | " + " | ".join(cols) + " |",
            "|---|" + "---:|" * len(cols),
        ]
        for r in self.rows:
            cells = [f"{r.scores[c]:.3f}" for c in self.methods] + [f"{r.oracle:.3f}"]
            lines.append(f"| {r.task} | " + " | ".join(cells) + " |")
        means = [f"**{self.mean(c):.3f}**" for c in self.methods]
        oracle = float(np.mean([r.oracle for r in self.rows]))
        lines.append("| mean | " + " | ".join(means) + f" | **{oracle:.3f}** |")
        rel = [f"{self.relative(c):.1%}" for c in self.methods]
        lines.append("| mean / oracle | " + " | ".join(rel) + " | 100% |")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        # a bare Figure, not pyplot: no global backend switch (a notebook that writes a
        # report keeps its inline plots) and nothing left open
        from matplotlib.figure import Figure

        cols = [*self.methods, "oracle"]
        tasks = [r.task for r in self.rows] + ["mean"]
        data = np.array(
            [[r.scores[c] for c in self.methods] + [r.oracle] for r in self.rows]
        )  # (T, C)
        data = np.vstack([data, data.mean(0)])
        fig = Figure(figsize=(max(8, 1.2 * len(tasks)), 4.5))
        ax = fig.subplots()
        width = 0.8 / len(cols)
        x = np.arange(len(tasks))
        for j, c in enumerate(cols):
            ax.bar(x + (j - len(cols) / 2 + 0.5) * width, data[:, j], width, label=c)
        ax.set_xticks(x, tasks, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (rank classification)")
        ax.set_ylim(0, 1)
        ax.set_title(f"Held-out tasks, {self.base_model}")
        ax.legend(fontsize=7, ncol=4, loc="upper left")
        fig.tight_layout()
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)


def oracle_weights(registry: Registry, base_model: str, task: Task) -> Adapter:
    rec = registry.find_adapter(base_model, f"{ZOO_PREFIX}{task.name}")
    if rec is None:
        raise InvalidInput(
            f"no zoo adapter for task {task.name}: run `loramint zoo build --tasks {task.name}`"
        )
    files = registry.adapter_files(rec.id)
    return files.config, parse_weights(files.weights)


def evaluate(
    registry: Registry,
    evaluator: Evaluator,
    tasks: Sequence[Task],
    *,
    base_model: str,
    generators: dict[str, Generator],  # column name -> loaded generator
    bank: ExpertBank,
    k: int,
    tau: float,
    guidance: tuple[int, float, float | None] | None = None,
    seed: int = 0,
    on_task: Callable[[str], None] | None = None,
) -> QualityReport:
    """Score every column on every task's test split with one evaluator (one model load).
    ``k`` and ``tau`` make the weighted-mean baseline; ``guidance`` (K, tau, gate) the
    SG-LoRA mixture mean (default: ``k``, ``tau``, no gate)."""
    sg_k, sg_tau, gate = guidance if guidance is not None else (k, tau, None)
    sg = _first_sg(generators)
    rows = []
    template = bank.template
    for task in tasks:
        if on_task:
            on_task(task.name)
        oracle = evaluator.accuracy(task, oracle_weights(registry, base_model, task))
        row = TaskRow(task.name, oracle=oracle.accuracy)
        row.scores["base"] = evaluator.accuracy(task).accuracy
        q = torch.as_tensor(registry.embedder.encode([task.description])[0])
        idx, sims = bank.nearest(q, k)
        row.neighbours = [bank.experts[i].record.name for i in idx]
        nearest = bank.layout.unflatten(bank.experts[idx[0]].weights)
        row.scores["nearest"] = evaluator.accuracy(task, (template, nearest)).accuracy
        row.scores["weighted-mean"] = evaluator.accuracy(
            task, (template, bank.weighted_weights(idx, sims, tau))
        ).accuracy
        if sg is not None:  # its own mixture: K, tau and gate
            mean = sg.mixture(q.numpy())[0].mean
        else:
            mean = bank.guided(q, sg_k, sg_tau, gate)[2].mean
        row.scores["sg-mixture-mean"] = evaluator.accuracy(
            task, (template, bank.layout.unflatten(mean))
        ).accuracy
        for column, gen in generators.items():
            made = gen.generate([Request(task.description, seed=seed)])[0]
            row.scores[column] = evaluator.accuracy(task, (made.config, made.weights)).accuracy
            if gen.method == SG_LORA:  # how many experts it mixed: 1 where a gate fired
                n = len(made.neighbours)
                row.choices[column] = {0: "no experts", 1: "nearest alone"}.get(n, f"top-{n}")
        rows.append(row)
    return QualityReport(
        base_model=base_model,
        methods=[*BASELINES, *generators],
        rows=rows,
        generators={c: g.id for c, g in generators.items() if g.id is not None},
        settings={
            "k": k,
            "tau": tau,
            "sg_k": sg_k,
            "sg_tau": sg_tau,
            "gate": gate,
            "seed": seed,
            "experts": len(bank),
        },
    )


def report_path(root: Path, base_model: str) -> Path:
    """Where ``write`` puts the JSON report of ``base_model`` under ``root``."""
    return root / f"quality-{base_model.replace('/', '_')}.json"


def write(report: QualityReport, root: Path) -> Path:
    """results/quality-<base>.json, .md and .png under ``root``; returns the json path."""
    path = report_path(root, report.base_model)
    write_atomic(path, json.dumps(report.to_json(), indent=2).encode())
    write_atomic(path.with_suffix(".md"), report.markdown().encode())
    report.plot(path.with_suffix(".png"))
    return path


def _first_sg(generators: dict[str, Generator]) -> Generator | None:
    return next((g for g in generators.values() if g.method == SG_LORA), None)


def sg_settings(generators: dict[str, Generator]) -> tuple[int, float] | None:
    """K and tau of the mixture baselines: the first SG-LoRA generator's. When its own
    choice is a single expert (the nearest baseline already), the baselines take the
    best K >= 2 of the grid it chose from, so "weighted mean of top-K" stays a mixture."""
    g = _first_sg(generators)
    if g is None:
        return None
    k, tau = int(g.ckpt.hyper["k"]), float(g.ckpt.hyper["tau"])
    if k <= 1:  # the nearest expert alone
        found = best_mixture(g.ckpt.hyper.get("k_tau_grid") or {}, g.ckpt.hyper)
        return found or (1, tau if tau > 0 else 1.0)
    return k, tau


def sg_guidance(generators: dict[str, Generator]) -> tuple[int, float, float | None] | None:
    """The first SG-LoRA generator's own K, tau and gate (its mixture-mean column)."""
    g = _first_sg(generators)
    if g is None:
        return None
    h = g.ckpt.hyper
    return int(h["k"]), float(h["tau"]), h.get("gate")


def best_mixture(grid: dict[str, float], hyper: dict[str, Any]) -> tuple[int, float] | None:
    """The best entry with K >= 2 of a "k=K,tau=T" -> score grid (None: there is none).
    Task grids hold accuracies (higher is better), weight grids errors (lower is)."""
    lower_is_better = hyper.get("k_tau_by") == "weights"
    best: tuple[float, int, float] | None = None
    for key, score in grid.items():
        cand = Candidate.parse(key)
        value = -score if lower_is_better else score
        if cand.k >= 2 and (best is None or value > best[0]):
            best = (value, cand.k, cand.tau)
    return (best[1], best[2]) if best else None
