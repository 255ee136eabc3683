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

MIN_GAIN = 0.1  # the oracle's least gain over the bare model for a held-out task to count


def gains_enough(gain: float, min_gain: float = MIN_GAIN) -> bool:
    """Whether an oracle's ``gain`` over the bare model reaches ``min_gain``; a difference
    of accuracies that prints as 0.100 (0.64 - 0.54) counts as 0.1."""
    return gain >= min_gain - 1e-9


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
            # suite v2: train, held_out (within its family) or new_family; and the label format
            **{k: task.meta[k] for k in ("split", "format") if k in task.meta},
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
    """Write ``results/zoo-<base>.json`` and ``.md`` under LORAMINT_HOME; return the json path.
    Held-out tasks are grouped by split (suite v2: ``held_out`` within a training family,
    ``new_family``); those whose oracle gains less than ``MIN_GAIN`` over the bare model
    are listed as dropped, as ``loramint eval generators`` drops them."""
    from pathlib import Path

    from registry.blobs import write_atomic

    rows = []
    for rec in zoo_records(registry, base_model):
        m = rec.metrics
        held_out = bool(rec.meta.get("held_out"))
        rows.append(
            {
                "task": rec.meta.get("task", rec.name[len(ZOO_PREFIX) :]),
                "family": rec.meta.get("family", ""),
                "held_out": held_out,
                "split": rec.meta.get("split") or ("held_out" if held_out else "train"),
                "adapter_id": rec.id,
                "base_accuracy": m.get("base_accuracy"),
                "accuracy": m.get("accuracy"),
                "train_seconds": m.get("train_seconds"),
                "tokens_per_second": m.get("tokens_per_second"),
            }
        )
    order = {"held_out": 0, "new_family": 1, "train": 2}
    rows.sort(key=lambda r: (order.get(r["split"], 3), r["family"], r["task"]))
    scored = [r for r in rows if r["accuracy"] is not None and r["base_accuracy"] is not None]
    held = [r for r in scored if r["held_out"]]

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    def gain(r: dict[str, Any]) -> float:
        return float(r["accuracy"] - r["base_accuracy"])

    splits: dict[str, Any] = {}
    for split in dict.fromkeys(r["split"] for r in held):
        of = [r for r in held if r["split"] == split]
        kept = [r for r in of if gains_enough(gain(r))]
        splits[split] = {
            "tasks": len(of),
            "kept": [r["task"] for r in kept],
            "dropped": {r["task"]: round(gain(r), 4) for r in of if not gains_enough(gain(r))},
            "mean_base_kept": mean([r["base_accuracy"] for r in kept]),
            "mean_oracle_kept": mean([r["accuracy"] for r in kept]),
        }
    summary: dict[str, Any] = {
        "base_model": base_model,
        "adapters": len(rows),
        "held_out": len(held),
        "mean_gain_held_out": mean([gain(r) for r in held]),
        "mean_gain_all": mean([gain(r) for r in scored]),
        "mean_base_held_out": mean([r["base_accuracy"] for r in held]),
        "mean_oracle_held_out": mean([r["accuracy"] for r in held]),
        "min_gain": MIN_GAIN,
        "splits": splits,
        "total_train_seconds": round(sum(r["train_seconds"] or 0 for r in rows), 1),
    }
    lines = [
        f"Zoo on `{base_model}`: {len(rows)} adapters, {len(held)} held out.",
        "",
        "| task | family | split | base acc | oracle acc | gain | train s | tokens/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc, base = r["accuracy"], r["base_accuracy"]
        change = f"{acc - base:+.3f}" if acc is not None and base is not None else "-"
        lines.append(
            f"| {r['task']} | {r['family']} | {r['split'].replace('_', ' ')} | "
            f"{_fmt(base)} | {_fmt(acc)} | {change} | {_fmt(r['train_seconds'], 0)} | "
            f"{_fmt(r['tokens_per_second'], 0)} |"
        )
    lines += [
        "",
        f"Held-out mean: base {_fmt(summary['mean_base_held_out'])}, oracle "
        f"{_fmt(summary['mean_oracle_held_out'])}, gain {_fmt(summary['mean_gain_held_out'])}; "
        f"all tasks mean gain {_fmt(summary['mean_gain_all'])}.",
    ]
    for split, info in splits.items():
        dropped = ", ".join(f"{t} ({g:+.3f})" for t, g in info["dropped"].items())
        lines.append(
            f"Split {split}: {len(info['kept'])} of {info['tasks']} tasks kept for evaluation "
            f"(oracle gain at least {MIN_GAIN}; base {_fmt(info['mean_base_kept'])}, oracle "
            f"{_fmt(info['mean_oracle_kept'])} on them); dropped: {dropped or 'none'}."
        )
    lines.append(f"Total training time: {summary['total_train_seconds']} s.")
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
