"""Few-shot quality on the held-out tasks: every method beside the same baselines.

For each task and each k, ``draws`` independent draws of k examples from the
task's *training* split (never its test split) are given to each method, and
the adapter it returns is scored on the task's test split:

- ``selection``, ``weighting``, ``refine``: the served few-shot path
  (``generator.serve.fewshot``) with selection alone, with fitted mixture
  weights, and with refinement of the chosen adapter;
- ``icm-examples``: ICM-LoRA given the examples (its in-context task vector);
- ``lorahub``: LoraHub's gradient-free search of the weights of the nearest
  experts (``generator.quality.lorahub``);
- ``scratch``: a LoRA trained from the shared init on the examples with
  refinement's step budget and early stopping.

Per task, once: the bare model, the nearest expert, zero-shot SG-LoRA and the
oracle (the task's own zoo adapter). Figures: accuracy, share of the oracle's
accuracy, and share of the oracle's gain over the bare model, (method - bare)
/ (oracle - bare), per task and on average, each as a mean and standard
deviation over the draws. Every scored cell is saved at once, so a run that is
stopped resumes where it left off.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from generator.adapt.examples import FewShot
from generator.adapt.pipeline import AdaptConfig
from generator.adapt.refine import refine
from generator.quality.heldout import oracle_weights
from generator.quality.lorahub import lorahub
from generator.quality.stats import difference_over_draws
from generator.serve.fewshot import adapt_generated
from generator.serve.generator import Generator, Request
from generator.tasks.evaluation import Evaluator
from generator.tasks.task import Task
from registry.blobs import update_atomic, write_atomic
from registry.errors import InvalidInput
from registry.lora_spec import Adapter
from registry.service import Registry

KS = (4, 8, 16, 32)
FIXED = ("base", "nearest", "sg-lora", "oracle")
METHODS = ("selection", "weighting", "refine", "icm-examples", "lorahub", "scratch")


@dataclass(frozen=True)
class FewShotSettings:
    ks: tuple[int, ...] = KS
    draws: int = 5
    methods: tuple[str, ...] = METHODS
    refine_steps: int = 20
    refine_lr: float = 3e-3  # chosen on training tasks (bench/fewshot_settings.py)
    scratch_lr: float = 2e-3  # the zoo's own rate: a LoRA from scratch needs it
    weighting_steps: int = 20
    lorahub_experts: int = 20
    lorahub_budget: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise InvalidInput(f"unknown methods {unknown}: choose from {', '.join(METHODS)}")
        if not self.ks or any(k < 1 for k in self.ks) or self.draws < 1:
            raise InvalidInput("ks must be positive and draws at least 1")


def draw(task: Task, k: int, index: int, seed: int = 0) -> FewShot:
    """The ``index``-th draw of ``k`` examples of ``task``'s training split."""
    if k > len(task.train):
        raise InvalidInput(f"task {task.name} has {len(task.train)} training examples, not {k}")
    rng = random.Random(f"{task.name}|{k}|{index}|{seed}")
    return FewShot(tuple(rng.sample(task.train, k)), task.labels)


# What a cell's figure depends on besides its key: a file made under other values cannot
# be resumed (ks, draws and methods only choose which cells are scored).
BINDING = (
    "refine_steps", "refine_lr", "scratch_lr", "weighting_steps", "lorahub_experts",
    "lorahub_budget", "seed",
)  # fmt: skip


class Cells:
    """The scored cells of one run, saved to ``path`` after every new one. ``made_by``
    names what else the figures depend on (the generators); a file made under other
    settings or generators is refused rather than mixed into. Each save merges in what
    other runs of the same settings (other ks, draws, methods or tasks) saved into the
    file meanwhile, so runs side by side do not overwrite each other's cells."""

    def __init__(
        self, path: Path, settings: FewShotSettings, made_by: dict[str, Any] | None = None
    ) -> None:
        self.path = path
        self.settings = settings
        self.made_by = made_by or {}
        self.cells: dict[str, dict[str, float]] = {}
        if path.exists():
            self.cells = self._same_run(json.loads(path.read_text()))

    def _same_run(self, data: dict[str, Any]) -> dict[str, dict[str, float]]:
        """The cells of ``data`` (a results file), refused if made under other settings."""
        cells: dict[str, dict[str, float]] = data.get("cells", {})
        if cells:
            before = {k: data.get("settings", {}).get(k) for k in BINDING}
            now = {k: getattr(self.settings, k) for k in BINDING}
            before |= {f"generator {k}": v for k, v in data.get("made_by", {}).items()}
            now |= {f"generator {k}": v for k, v in self.made_by.items()}
            differ = sorted(k for k in now if before.get(k) != now[k])
            if differ:
                shown = ", ".join(f"{k} {before.get(k)} -> {now[k]}" for k in differ)
                raise InvalidInput(
                    f"{self.path} holds cells made with other settings ({shown}): move it "
                    "away to start a new run, or run with the settings it was made with"
                )
        return cells

    @staticmethod
    def key(task: str, k: int | None, index: int | None, method: str) -> str:
        return f"{task}|{'-' if k is None else k}|{'-' if index is None else index}|{method}"

    def get(self, key: str) -> dict[str, float] | None:
        return self.cells.get(key)

    def put(self, key: str, accuracy: float, seconds: float) -> None:
        cell = {"accuracy": round(accuracy, 4), "seconds": round(seconds, 2)}

        def merged(kept: bytes | None) -> bytes:
            others = self._same_run(json.loads(kept)) if kept is not None else {}
            self.cells = others | self.cells | {key: cell}
            payload = {
                "settings": asdict(self.settings), "made_by": self.made_by, "cells": self.cells
            }  # fmt: skip
            return json.dumps(payload, indent=1).encode()

        update_atomic(self.path, merged)


def evaluate_fewshot(
    registry: Registry,
    evaluator: Evaluator,
    tasks: Sequence[Task],
    *,
    base_model: str,
    sg: Generator,
    icm: Generator | None,
    settings: FewShotSettings,
    path: Path,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score every missing cell into ``path``; returns the summary (``summarise``)."""
    made_by = {"sg-lora": sg.id} | ({"icm-lora": icm.id} if icm is not None else {})
    cells = Cells(path, settings, made_by)

    def cell(key: str, make: Callable[[], Adapter | None], task: Task) -> None:
        if cells.get(key) is not None:
            return
        t0 = time.perf_counter()
        adapter = make()
        made = time.perf_counter() - t0
        cells.put(key, evaluator.accuracy(task, adapter).accuracy, made)
        if on_progress:
            on_progress(f"{key}: {cells.cells[key]['accuracy']:.3f} ({made:.1f} s)")

    for task in tasks:
        query = _unit(registry.embedder.encode([task.description])[0])
        zero_shot = sg.generate([Request(task.description, seed=settings.seed)])[0]
        experts, _ = sg.neighbours(query, max(settings.lorahub_experts, 1))
        template = dict(zero_shot.config)
        nearest = (template, sg.ckpt.layout.unflatten(experts[0].weights))
        oracle = oracle_weights(registry, base_model, task)
        fixed = {"base": None, "nearest": nearest, "sg-lora": _adapter(zero_shot), "oracle": oracle}
        for name, adapter in fixed.items():
            cell(cells.key(task.name, None, None, name), _const(adapter), task)
        hub_experts = [sg.ckpt.layout.unflatten(e.weights) for e in experts]
        for k in settings.ks:
            for index in range(settings.draws):
                shots = draw(task, k, index, settings.seed)
                makers = method_makers(
                    evaluator, sg, icm, task, shots, zero_shot, template, hub_experts, settings
                )
                for method in settings.methods:
                    if method == "icm-examples" and icm is None:
                        continue
                    cell(cells.key(task.name, k, index, method), makers[method], task)
    return summarise(cells.cells, tasks, settings)


def method_makers(
    evaluator: Evaluator,
    sg: Generator,
    icm: Generator | None,
    task: Task,
    shots: FewShot,
    zero_shot: Any,
    template: dict[str, Any],
    hub_experts: list[Any],
    s: FewShotSettings,
) -> dict[str, Callable[[], Adapter | None]]:
    """How each method makes its adapter for one draw."""

    def served(config: AdaptConfig) -> Callable[[], Adapter | None]:
        def make() -> Adapter | None:
            request = Request(task.description, seed=s.seed, fewshot=shots, adapt=config)
            return _adapter(adapt_generated(sg, request, zero_shot))

        return make

    def icm_examples() -> Adapter | None:
        assert icm is not None
        made = icm.generate([Request(task.description, seed=s.seed, fewshot=shots)])[0]
        return _adapter(made)

    def hub() -> Adapter | None:
        found = lorahub(
            evaluator, task.description, shots.examples, template, hub_experts,
            budget=s.lorahub_budget, seed=s.seed,
        )  # fmt: skip
        return found.adapter

    def scratch() -> Adapter | None:
        return refine(
            evaluator, task.description, shots, None, template, steps=s.refine_steps,
            lr=s.scratch_lr, seed=s.seed,
        ).adapter  # fmt: skip

    return {
        "selection": served(AdaptConfig(estimate=False, seed=s.seed)),
        "weighting": served(
            AdaptConfig(weighting=True, weighting_steps=s.weighting_steps, estimate=False)
        ),
        "refine": served(
            AdaptConfig(refine_steps=s.refine_steps, refine_lr=s.refine_lr, estimate=False)
        ),
        "icm-examples": icm_examples,
        "lorahub": hub,
        "scratch": scratch,
    }


def _const(adapter: Adapter | None) -> Callable[[], Adapter | None]:
    return lambda: adapter


def _adapter(made: Any) -> Adapter:
    return (dict(made.config), made.weights)


def _unit(vector: Any) -> Any:
    import numpy as np

    v = np.asarray(vector, dtype=np.float32)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def summarise(
    cells: dict[str, dict[str, float]], tasks: Sequence[Task], settings: FewShotSettings
) -> dict[str, Any]:
    """Per k and method: per-task means and standard deviations over the draws, the
    average over tasks of accuracy, share of the oracle and share of its gain, and for
    the few-shot methods the paired difference to the nearest expert (``vs_nearest``)."""
    columns = [*FIXED[:3], *settings.methods]
    out: dict[str, Any] = {"ks": {}, "tasks": [t.name for t in tasks]}
    for k in settings.ks:
        per_method: dict[str, Any] = {}
        for method in columns:
            rows = []
            paired: list[tuple[list[float], float] | None] = []  # (draws, nearest) a task
            for task in tasks:
                fixed = {m: cells.get(Cells.key(task.name, None, None, m)) for m in FIXED}
                if method in FIXED:
                    keys = [Cells.key(task.name, None, None, method)]
                else:
                    keys = [Cells.key(task.name, k, i, method) for i in range(settings.draws)]
                found = [c for key in keys if (c := cells.get(key)) is not None]
                accs = [c["accuracy"] for c in found]
                near = fixed["nearest"]
                paired.append((accs, near["accuracy"]) if accs and near else None)
                bare, best = fixed["base"], fixed["oracle"]
                if bare is None or best is None or not found:
                    continue
                base, oracle = bare["accuracy"], best["accuracy"]
                gain = oracle - base
                rows.append(
                    {
                        "task": task.name,
                        "draws": len(accs),
                        "accuracy": statistics.fmean(accs),
                        "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                        "share_of_oracle": statistics.fmean(accs) / oracle if oracle else None,
                        "share_of_gain": (statistics.fmean(accs) - base) / gain if gain else None,
                        "seconds": statistics.fmean(c["seconds"] for c in found),
                    }
                )
            if rows:
                per_method[method] = {"tasks": rows, **_means(rows)}
                if method not in FIXED and all(p is not None for p in paired):
                    complete = [p for p in paired if p is not None]
                    versus = difference_over_draws(
                        [d for d, _ in complete], [n for _, n in complete]
                    )
                    per_method[method]["vs_nearest"] = {
                        key: round(x, 4) for key, x in versus.to_json().items()
                    }
        out["ks"][str(k)] = per_method
    return out


def _means(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return round(statistics.fmean(values), 4) if values else None

    return {
        "accuracy": mean("accuracy"),
        "share_of_oracle": mean("share_of_oracle"),
        "share_of_gain": mean("share_of_gain"),
        "seconds": mean("seconds"),
        "tasks_scored": len(rows),
    }


def markdown(summary: dict[str, Any], oracle: dict[str, float]) -> str:
    """One table per k: methods as rows, task accuracies (mean ± std over draws) and the
    averages."""
    lines = []
    tasks = summary["tasks"]
    for k, per_method in summary["ks"].items():
        lines += [
            f"**k = {k}** (mean ± std over draws)",
            "",
            "| method | " + " | ".join(tasks) + " | accuracy | / oracle | share of gain | "
            "vs nearest (95 % CI) | s |",
            "|---|" + "---:|" * (len(tasks) + 5),
        ]
        for method, data in per_method.items():
            by_task = {r["task"]: r for r in data["tasks"]}
            cells = [
                f"{by_task[t]['accuracy']:.3f} ± {by_task[t]['std']:.3f}" if t in by_task else "-"
                for t in tasks
            ]
            versus = data.get("vs_nearest")
            shown = (
                f"{versus['value']:+.3f} [{versus['low']:+.3f}, {versus['high']:+.3f}]"
                if versus
                else ""
            )
            lines.append(
                f"| {method} | " + " | ".join(cells) + f" | {_f(data['accuracy'])} | "
                f"{_pct(data['share_of_oracle'])} | {_pct(data['share_of_gain'])} | {shown} | "
                f"{_f(data['seconds'], 1)} |"
            )
        lines.append(
            "| oracle | " + " | ".join(_f(oracle.get(t)) for t in tasks) + " | "
            f"{_f(statistics.fmean(oracle.values()) if oracle else None)} | 100% | 100% | | |"
        )
        lines.append("")
    return "\n".join(lines)


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Share of the oracle's gain against k, one line per method."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ks = sorted(int(k) for k in summary["ks"])
    methods = list(next(iter(summary["ks"].values()), {}))
    for method in methods:
        ys = [summary["ks"][str(k)].get(method, {}).get("share_of_gain") for k in ks]
        ax.plot(ks, [float("nan") if y is None else 100 * y for y in ys], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("labelled examples k")
    ax.set_ylabel("share of the oracle's gain over the bare model (%)")
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def oracle_accuracies(
    cells: dict[str, dict[str, float]], tasks: Sequence[Task]
) -> dict[str, float]:
    out = {}
    for t in tasks:
        found = cells.get(Cells.key(t.name, None, None, "oracle"))
        if found is not None:
            out[t.name] = found["accuracy"]
    return out


def write(
    summary: dict[str, Any], cells: dict[str, dict[str, float]], tasks: Sequence[Task], path: Path
) -> None:
    """The summary next to the cells file: ``-summary.json``, ``.md`` and ``.png``."""
    write_atomic(
        path.with_name(path.stem + "-summary.json"), json.dumps(summary, indent=1).encode()
    )
    write_atomic(
        path.with_suffix(".md"), markdown(summary, oracle_accuracies(cells, tasks)).encode()
    )
    plot(summary, path.with_suffix(".png"))


def results_path(root: Path, base_model: str) -> Path:
    return root / f"fewshot-{base_model.replace('/', '_')}.json"
