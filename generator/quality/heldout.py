"""Generator quality on held-out tasks, every method and baseline in one run.

For each task: the bare base model; the nearest expert (top-1 by description,
its registered weights); the softmax-weighted mean of the top-K experts'
weights (SG-LoRA's K and tau; its best K >= 2 when SG-LoRA's K is 1); SG-LoRA's
mixture mean mu* alone (its own K, tau and similarity gate); the multi-task
LoRA when one is registered (``generator.quality.multitask``); each generator's
adapter; and the oracle (the zoo adapter trained on the task itself).

Generators and retrieval read the task's evaluation wording
(``meta["eval_description"]``, one no generator trained on) where the suite
has one, else its description. Tasks whose oracle gains less than ``min_gain``
over the bare model are dropped and listed: on them every share of the gain
is noise. The kept tasks are summarised per split (``meta["split"]``:
``held_out`` within the training families, ``new_family`` for a family no
generator trained on) by ``generator.quality.stats``: mean accuracy, share of
the oracle's accuracy and share of its gain, (m - b) / (o - b), with bootstrap
intervals over tasks and test examples, and paired intervals for each
generator's difference to the nearest expert and the multi-task LoRA.
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
from generator.quality.stats import Outcomes, Summary, summarise
from generator.serve.generator import Generator, Request
from generator.tasks.evaluation import EvalResult, Evaluator
from generator.tasks.task import Task
from generator.zoo.build import MIN_GAIN, ZOO_PREFIX, gains_enough
from registry.blobs import write_atomic
from registry.errors import InvalidInput
from registry.lora_spec import Adapter
from registry.service import Registry

BASELINES = ("base", "nearest", "weighted-mean", "sg-mixture-mean")
MULTITASK = "multi-task"
SPLITS = ("held_out", "new_family")


@dataclass
class TaskRow:
    task: str
    oracle: float
    split: str = "held_out"
    description: str = ""  # the wording generators and retrieval were given
    scores: dict[str, float] = field(default_factory=dict)
    neighbours: list[str] = field(default_factory=list)
    # column -> how many experts an SG-LoRA generator mixed ("nearest alone", "top-K")
    choices: dict[str, str] = field(default_factory=dict)
    # column -> per test example, whether the column answered it ("oracle" included)
    correct: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        return self.oracle - self.scores["base"]

    def outcomes(self) -> Outcomes:
        return Outcomes(self.task, self.correct)


@dataclass
class QualityReport:
    base_model: str
    methods: list[str]  # column order
    rows: list[TaskRow]  # the kept tasks
    generators: dict[str, int]  # column -> generator id
    settings: dict[str, Any]
    dropped: list[TaskRow] = field(default_factory=list)  # the oracle gained < min_gain
    # the bootstrap, run once: the JSON, the table and the plot all read it
    _summaries: dict[str, Summary] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def mean(self, column: str) -> float:
        return float(np.mean([r.scores[column] for r in self.rows]))

    def relative(self, column: str) -> float:
        """Mean over tasks of accuracy / oracle accuracy."""
        return float(np.mean([r.scores[column] / r.oracle for r in self.rows if r.oracle > 0]))

    @property
    def splits(self) -> list[str]:
        present = {r.split for r in self.rows}
        return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))

    def pairs(self) -> list[tuple[str, str]]:
        """(generator, baseline) for every generator against the nearest expert and the
        multi-task LoRA: the differences the report gives paired intervals for."""
        against = ["nearest"] + ([MULTITASK] if MULTITASK in self.methods else [])
        return [(g, b) for g in self.generators_columns for b in against]

    @property
    def generators_columns(self) -> list[str]:
        return [c for c in self.methods if c not in (*BASELINES, MULTITASK)]

    def summaries(self) -> dict[str, Summary]:
        """Per split, the bootstrap summary of the kept tasks (seeded: the same report
        gives the same intervals)."""
        if self._summaries is None:
            seed = int(self.settings.get("bootstrap_seed", 0))
            out = {}
            for split in self.splits:
                rows = [r for r in self.rows if r.split == split]
                out[split] = summarise(
                    [r.outcomes() for r in rows], [*self.methods, "oracle"], self.pairs(),
                    seed=seed,
                )  # fmt: skip
            self._summaries = out
        return self._summaries

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
                    "split": r.split,
                    "description": r.description,
                    "n": len(r.correct["base"]),
                    "gain_share": {
                        c: (r.scores[c] - r.scores["base"]) / r.gain for c in self.methods
                    },
                    "neighbours": r.neighbours,
                    "choices": r.choices,
                    # per test example, 1 where the column answered right
                    "correct": {
                        c: "".join("1" if x else "0" for x in v) for c, v in r.correct.items()
                    },
                }  # fmt: skip
                for r in self.rows
            ],
            "dropped": [
                {"task": r.task, "split": r.split, "base": r.scores["base"], "oracle": r.oracle}
                for r in self.dropped
            ],
            "mean": {c: self.mean(c) for c in self.methods}
            | {"oracle": float(np.mean([r.oracle for r in self.rows]))},
            "relative_to_oracle": {c: self.relative(c) for c in self.methods},
            "splits": {s: summary.to_json() for s, summary in self.summaries().items()},
        }

    def markdown(self) -> str:
        from generator.quality.render import markdown

        return markdown(self)

    def plot(self, path: Path) -> None:
        from generator.quality.render import plot

        plot(self, path)


def oracle_weights(registry: Registry, base_model: str, task: Task) -> Adapter:
    rec = registry.find_adapter(base_model, f"{ZOO_PREFIX}{task.name}")
    if rec is None:
        raise InvalidInput(
            f"no zoo adapter for task {task.name}: run `loramint zoo build --tasks {task.name}`"
        )
    return registry.adapter_files(rec.id).parsed()


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
    multitask: Adapter | None = None,
    min_gain: float = MIN_GAIN,
    seed: int = 0,
    on_task: Callable[[str], None] | None = None,
) -> QualityReport:
    """Score every column on every task's test split with one evaluator (one model load).
    ``k`` and ``tau`` make the weighted-mean baseline; ``guidance`` (K, tau, gate) the
    SG-LoRA mixture mean (default: ``k``, ``tau``, no gate); ``multitask`` is the
    multi-task LoRA's adapter (its column is left out without one). Tasks whose oracle
    gains less than ``min_gain`` over the bare model are only listed as dropped."""
    sg_k, sg_tau, gate = guidance if guidance is not None else (k, tau, None)
    sg = _first_sg(generators)
    rows, dropped = [], []
    template = bank.template
    for task in tasks:
        if on_task:
            on_task(task.name)
        row = TaskRow(
            task.name,
            oracle=0.0,
            split=str(task.meta.get("split", "held_out")),
            description=str(task.meta.get("eval_description") or task.description),
        )
        row.oracle = _score(row, "oracle", evaluator.accuracy(task, oracle_weights(
            registry, base_model, task)), task)  # fmt: skip
        _score(row, "base", evaluator.accuracy(task), task)
        if not gains_enough(row.gain, min_gain):
            dropped.append(row)
            continue
        q = torch.as_tensor(registry.embedder.encode([row.description])[0])
        idx, sims = bank.nearest(q, k)
        row.neighbours = [bank.experts[i].record.name for i in idx]
        nearest = bank.layout.unflatten(bank.experts[idx[0]].weights)
        _score(row, "nearest", evaluator.accuracy(task, (template, nearest)), task)
        mixed = bank.weighted_weights(idx, sims, tau)
        _score(row, "weighted-mean", evaluator.accuracy(task, (template, mixed)), task)
        if sg is not None:  # its own mixture: K, tau and gate
            mean = sg.mixture(q.numpy())[0].mean
        else:
            mean = bank.guided(q, sg_k, sg_tau, gate)[2].mean
        _score(row, "sg-mixture-mean", evaluator.accuracy(
            task, (template, bank.layout.unflatten(mean))), task)  # fmt: skip
        if multitask is not None:
            _score(row, MULTITASK, evaluator.accuracy(task, multitask), task)
        for column, gen in generators.items():
            made = gen.generate([Request(row.description, seed=seed)])[0]
            _score(row, column, evaluator.accuracy(task, (made.config, made.weights)), task)
            if gen.method == SG_LORA:  # how many experts it mixed: 1 where a gate fired
                n = len(made.neighbours)
                row.choices[column] = {0: "no experts", 1: "nearest alone"}.get(n, f"top-{n}")
        rows.append(row)
    if not rows:
        raise InvalidInput(
            f"no task's oracle gains {min_gain} over the bare model: nothing to compare "
            f"({', '.join(r.task for r in dropped)} dropped)"
        )
    extra = [MULTITASK] if multitask is not None else []
    return QualityReport(
        base_model=base_model,
        methods=[*BASELINES, *extra, *generators],
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
            "min_gain": min_gain,
            "bootstrap_seed": 0,
        },
        dropped=dropped,
    )


def _score(row: TaskRow, column: str, result: EvalResult, task: Task) -> float:
    """Record ``column``'s accuracy and per-example outcomes on ``task``'s test split."""
    row.correct[column] = np.array(
        [p == e.output for p, e in zip(result.predictions, task.test, strict=True)]
    )
    if column != "oracle":
        row.scores[column] = result.accuracy
    return result.accuracy


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
