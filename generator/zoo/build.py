"""The zoo: one trained LoRA per task, registered with its evaluation and its
training trajectory statistics.

Resumable by construction: an adapter is registered in one transaction after
its training and evaluation finish, and a task whose adapter exists is
skipped. A killed build loses at most the task it was training.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from generator.tasks.device import model_device
from generator.tasks.evaluation import Evaluator, load_base
from generator.tasks.task import Task
from generator.zoo.artifacts import SEEDS, TRAJECTORY, seeds_bytes, trajectory_bytes
from generator.zoo.trainer import TrainConfig, train_lora
from registry.lora_spec import weights_bytes
from registry.models import Provenance
from registry.peft_format import PeftFiles
from registry.service import Registry

ZOO_PREFIX = "zoo-"


@dataclass(frozen=True)
class ZooEntry:
    task: str
    adapter_id: int
    held_out: bool
    base_accuracy: float | None
    accuracy: float | None
    train_seconds: float
    tokens_per_second: float
    trained_now: bool


def adapter_name(task: Task) -> str:
    return f"{ZOO_PREFIX}{task.name}"


def task_seed(task: Task, base_seed: int) -> int:
    """A data-order seed per task that does not depend on Python's hash salt."""
    return base_seed + zlib.crc32(task.name.encode()) % 100_000


def build_zoo(
    registry: Registry,
    tasks: Sequence[Task],
    *,
    base_model: str,
    config: TrainConfig,
    evaluate: bool = True,
    on_task: Callable[[Task, int, int], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    device: str = "auto",
) -> list[ZooEntry]:
    """Train, evaluate and register one adapter per task; skip tasks already in the registry.
    The base model runs on ``device`` (``generator.tasks.device``)."""
    bm = registry.prepare_base_model(base_model, on_progress=on_progress)
    todo = []
    entries: dict[str, ZooEntry] = {}
    for task in tasks:
        rec = registry.find_adapter(bm.name, adapter_name(task))
        if rec is None:
            todo.append(task)
        else:
            entries[task.name] = _entry(task, rec.id, rec.metrics, trained_now=False)
    if todo:
        model, tokenizer = load_base(registry.base_model_path(bm.name), device)
        evaluator = Evaluator(model, tokenizer)
        for i, task in enumerate(todo):
            if on_task:
                on_task(task, i, len(todo))
            entries[task.name] = _train_one(
                registry, bm.name, task, config, evaluator, evaluate, on_step
            )
    return [entries[t.name] for t in tasks]


def _train_one(
    registry: Registry,
    base_model: str,
    task: Task,
    config: TrainConfig,
    evaluator: Evaluator,
    evaluate: bool,
    on_step: Callable[[int, float], None] | None,
) -> ZooEntry:
    cfg = dataclasses.replace(config, seed=task_seed(task, config.seed))
    base_acc = evaluator.accuracy(task).accuracy if evaluate and task.is_classification else None
    result = train_lora(
        evaluator.model, evaluator.format, task.description, task.train, cfg, on_step=on_step
    )
    acc = (
        evaluator.accuracy(task, (result.peft_config, result.weights)).accuracy
        if evaluate and task.is_classification
        else None
    )
    metrics: dict[str, Any] = {
        "train_seconds": round(result.seconds, 2),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "final_loss": round(sum(result.losses[-5:]) / len(result.losses[-5:]), 4),
        "task": task.name,
        "device": model_device(evaluator.model).type,
    }
    if acc is not None:
        metrics.update(accuracy=acc, base_accuracy=base_acc, eval_n=len(task.test))
    peft_config = {
        **result.peft_config,
        "base_model_name_or_path": base_model,
        "inference_mode": True,
    }
    rec = registry.add_adapter(
        PeftFiles(config=peft_config, weights=weights_bytes(result.weights)),
        base_model=base_model,
        description=task.description,
        name=adapter_name(task),
        provenance=Provenance.TRAINED,
        metrics=metrics,
        meta={
            "task": task.name,
            "family": task.family,
            "held_out": task.held_out,
            "labels": list(task.labels),
            "source": task.source,
            "licence": task.licence,
            # every training wording of the task (suite v2): generators train on each
            "paraphrases": list(task.meta.get("paraphrases") or [task.description]),
            "init": {"scheme": "shared-A", "init_seed": cfg.init_seed},
            "train_config": dataclasses.asdict(cfg),
        },
        artifacts={TRAJECTORY: trajectory_bytes(result), SEEDS: seeds_bytes(task.seeds())},
    )
    return _entry(task, rec.id, metrics, trained_now=True)


def _entry(task: Task, adapter_id: int, metrics: dict[str, Any], *, trained_now: bool) -> ZooEntry:
    return ZooEntry(
        task=task.name,
        adapter_id=adapter_id,
        held_out=task.held_out,
        base_accuracy=metrics.get("base_accuracy"),
        accuracy=metrics.get("accuracy"),
        train_seconds=float(metrics.get("train_seconds", 0.0)),
        tokens_per_second=float(metrics.get("tokens_per_second", 0.0)),
        trained_now=trained_now,
    )


def zoo_records(registry: Registry, base_model: str) -> list[Any]:
    """Registered zoo adapters of ``base_model`` (trained adapters named ``zoo-<task>``)."""
    out = []
    offset = 0
    while True:
        page = registry.list_adapters(
            base_model=base_model, provenance="trained", limit=500, offset=offset
        )
        out += [r for r in page if r.name.startswith(ZOO_PREFIX)]
        if len(page) < 500:
            return out
        offset += 500


def write_report(registry: Registry, base_model: str, *, extra: Any = None) -> Any:
    """Write ``results/zoo-<base>.json`` and ``.md`` under LORAMINT_HOME; return the json path."""
    from pathlib import Path

    from registry.blobs import write_atomic

    rows = []
    for rec in zoo_records(registry, base_model):
        m = rec.metrics
        rows.append(
            {
                "task": rec.meta.get("task", rec.name[len(ZOO_PREFIX) :]),
                "family": rec.meta.get("family", ""),
                "held_out": bool(rec.meta.get("held_out")),
                "adapter_id": rec.id,
                "base_accuracy": m.get("base_accuracy"),
                "accuracy": m.get("accuracy"),
                "train_seconds": m.get("train_seconds"),
                "tokens_per_second": m.get("tokens_per_second"),
            }
        )
    rows.sort(key=lambda r: (not r["held_out"], r["family"], r["task"]))
    scored = [r for r in rows if r["accuracy"] is not None and r["base_accuracy"] is not None]
    held = [r for r in scored if r["held_out"]]

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    summary: dict[str, Any] = {
        "base_model": base_model,
        "adapters": len(rows),
        "held_out": len(held),
        "mean_gain_held_out": mean([r["accuracy"] - r["base_accuracy"] for r in held]),
        "mean_gain_all": mean([r["accuracy"] - r["base_accuracy"] for r in scored]),
        "mean_base_held_out": mean([r["base_accuracy"] for r in held]),
        "mean_oracle_held_out": mean([r["accuracy"] for r in held]),
        # a gain under 5 points is inside the noise of a 100-example test split
        "no_clear_gain": [r["task"] for r in scored if r["accuracy"] - r["base_accuracy"] < 0.05],
        "total_train_seconds": round(sum(r["train_seconds"] or 0 for r in rows), 1),
    }
    lines = [
        f"Zoo on `{base_model}`: {len(rows)} adapters, {len(held)} held out.",
        "",
        "| task | family | held out | base acc | oracle acc | gain | train s | tokens/s |",
        "|---|---|:-:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc, base = r["accuracy"], r["base_accuracy"]
        gain = f"{acc - base:+.3f}" if acc is not None and base is not None else "-"
        lines.append(
            f"| {r['task']} | {r['family']} | {'yes' if r['held_out'] else ''} | "
            f"{_fmt(base)} | {_fmt(acc)} | {gain} | {_fmt(r['train_seconds'], 0)} | "
            f"{_fmt(r['tokens_per_second'], 0)} |"
        )
    lines += [
        "",
        f"Held-out mean: base {_fmt(summary['mean_base_held_out'])}, oracle "
        f"{_fmt(summary['mean_oracle_held_out'])}, gain {_fmt(summary['mean_gain_held_out'])}; "
        f"all tasks mean gain {_fmt(summary['mean_gain_all'])}.",
        f"Tasks where the oracle gains less than 0.05 over the bare model: "
        f"{', '.join(summary['no_clear_gain']) or 'none'}.",
        f"Total training time: {summary['total_train_seconds']} s.",
    ]
    root = registry.settings.results_dir
    slug = base_model.replace("/", "_")
    json_path = Path(root) / f"zoo-{slug}.json"
    write_atomic(json_path, json.dumps({"summary": summary, "tasks": rows}, indent=2).encode())
    md = "\n".join(lines) + "\n"
    write_atomic(json_path.with_suffix(".md"), md.encode())
    if extra is not None:
        write_atomic(Path(extra), md.encode())
    return json_path


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"
