"""Does scoring in bfloat16 rank labels as float32 does? The check behind few-shot
selection's ``precision="auto"``.

    .venv/bin/python bench/precision.py [--base-model M] [--limit 12] [--k 16]

On the registry in $LORAMINT_HOME and its default task suite, for the first
``--limit`` *training* tasks with a zoo adapter (held-out tasks are never used
to choose a setting): each task's test split scored by the bare model and by
the task's own zoo adapter, once in float32 (the harness) and once in bfloat16
(``Evaluator.screening``). Per task: how many predictions agree, both
accuracies, and the largest difference in a label's log-probability. Then the
seconds to score ``--k`` training examples with the adapter in each precision
(median over tasks; the p50 speed-up is what few-shot selection gains where the
CPU multiplies bfloat16 natively).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--limit", type=int, default=12, help="training tasks compared")
    ap.add_argument("--k", type=int, default=16, help="examples a timed scoring pass holds")
    args = ap.parse_args()
    if args.limit < 1 or args.k < 1:
        raise SystemExit("--limit and --k must be at least 1")

    from generator.quality.heldout import oracle_weights
    from generator.tasks.device import model_device, native_bfloat16
    from generator.tasks.evaluation import Evaluator
    from generator.tasks.task import TaskSuite
    from generator.zoo.build import ZOO_PREFIX
    from registry.service import Registry
    from registry.settings import Settings

    registry = Registry(Settings.from_env())
    suite = TaskSuite(registry.settings.tasks_dir / "default")
    tasks = [
        t
        for t in suite
        if not t.held_out
        and t.is_classification
        and registry.find_adapter(args.base_model, f"{ZOO_PREFIX}{t.name}") is not None
    ][: args.limit]
    if not tasks:
        raise SystemExit("no training task has a zoo adapter: run `loramint zoo build` first")
    full = Evaluator.from_path(registry.base_model_path(args.base_model))
    fast = full.screening("bfloat16")
    print(f"native bfloat16 on this CPU: {native_bfloat16(model_device(full.model))}")
    print("| task | n | agree bare | agree adapter | acc fp32 | acc bf16 | max dlogp |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    agree = total = 0
    acc_diffs: list[float] = []
    seconds: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for task in tasks:
        adapter = oracle_weights(registry, args.base_model, task)
        row, worst = [], 0.0
        for which in (None, adapter):
            a, b = full.label_scores(task, which), fast.label_scores(task, which)
            same = int((a.argmax(-1) == b.argmax(-1)).sum())
            agree, total = agree + same, total + len(a)
            worst = max(worst, float((a - b).abs().max()))
            row.append(same)
        acc32 = full.accuracy(task, adapter).accuracy
        acc16 = fast.accuracy(task, adapter).accuracy
        acc_diffs.append(acc16 - acc32)
        for name, ev in (("float32", full), ("bfloat16", fast)):
            shots = task.train[: args.k]
            ev.label_scores(task, adapter, examples=shots)  # warm
            t0 = time.perf_counter()
            ev.label_scores(task, adapter, examples=shots)
            seconds[name].append(time.perf_counter() - t0)
        n = len(task.test)
        print(
            f"| {task.name} | {n} | {row[0]}/{n} | {row[1]}/{n} | {acc32:.3f} | {acc16:.3f} "
            f"| {worst:.3f} |"
        )
    p32, p16 = statistics.median(seconds["float32"]), statistics.median(seconds["bfloat16"])
    print(
        f"\n{len(tasks)} training tasks: {agree}/{total} predictions agree "
        f"({100 * agree / total:.1f} %); adapter accuracy bf16 - fp32: mean "
        f"{statistics.mean(acc_diffs):+.4f}, largest {max(acc_diffs, key=abs):+.3f}"
    )
    print(
        f"scoring {args.k} examples with an adapter, p50: float32 {p32:.2f} s, "
        f"bfloat16 {p16:.2f} s ({p32 / p16:.1f}x)"
    )
    registry.close()


if __name__ == "__main__":
    main()
