"""Which prototype of an expert transfers better: its late-trajectory mean or its final weights?

    .venv/bin/python bench/prototypes.py [--base-model M] [--examples 32]

SG-LoRA mixes the experts' late-trajectory means; the harness's "nearest"
baseline serves the nearest expert's registered (final) weights. This asks
which of the two serves a *new* task better, on the training tasks only
(held-out tasks never reach it): each training expert t plays the new task,
its nearest other expert by description is attached to the base model as its
trajectory mean and as its final weights, and both are scored on ``examples``
of t's own training examples (the examples selection scores). Prints one row
per task and the means.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--examples", type=int, default=32)
    args = ap.parse_args()
    if args.examples < 1:
        raise SystemExit("--examples must be at least 1")

    from generator.evaluation import Evaluator
    from generator.experts import ExpertBank
    from generator.generators import default_suite_tasks
    from generator.selection import _score, spread
    from registry.service import Registry

    reg = Registry()
    bank = ExpertBank.from_registry(reg, args.base_model)
    tasks = bank.tasks_of(default_suite_tasks(reg))  # training experts' tasks only
    if not tasks:
        raise SystemExit("no training expert's task at hand: run `loramint tasks build`")
    evaluator = Evaluator.from_path(reg.base_model_path(bank.base_model))
    rows = []
    print(f"{'task':28s} {'nearest other expert':28s} {'sim':>5s} {'mean':>6s} {'final':>6s}")
    for t, task in sorted(tasks.items(), key=lambda kv: kv[1].name):
        if not task.is_classification:
            continue
        (j,), (sim,) = bank.nearest(bank.embeddings[t], 1, exclude=t)
        chosen = spread(task.train, args.examples)
        expert = bank.experts[j]
        mean = _score(evaluator, task, chosen, (bank.template, bank.layout.unflatten(expert.mean)))
        final = _score(
            evaluator, task, chosen, (bank.template, bank.layout.unflatten(expert.weights))
        )
        rows.append((mean[0], final[0]))
        print(
            f"{task.name:28s} {expert.record.name:28s} {float(sim):5.2f} "
            f"{mean[0]:6.3f} {final[0]:6.3f}",
            flush=True,
        )
    n = len(rows)
    print(
        f"{'mean over ' + str(n) + ' tasks':63s} {sum(r[0] for r in rows) / n:6.3f} "
        f"{sum(r[1] for r in rows) / n:6.3f}"
    )


if __name__ == "__main__":
    main()
