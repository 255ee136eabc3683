"""Zoo adapters one at a time against several in the same passes, on one machine.

    .venv/bin/python bench/stacked.py [--count 4] [--steps 40] [--suite PATH] [--device auto]

The first ``--count`` training tasks of the suite (default: the default suite in
$LORAMINT_HOME) are trained with the zoo's recipe (``--steps`` steps of 16
examples) twice, in the same run:
- one at a time, as `loramint zoo build` trains them (``train_lora``: each task's
  shared prompt prefix runs once a batch);
- all together (``generator.zoo.stacked.train_stacked``: each row of a batch
  carries its task's LoRA; no prefix is shared).

Prints seconds per adapter and non-padding tokens per second for both, and the
largest difference between the two adapters of each task (float rounding only).
Nothing is registered. Stacking pays where kernel launches, not arithmetic, bound
a step (a GPU); on a CPU it costs the arithmetic of the unshared prefixes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--count", type=int, default=4, help="tasks trained (default 4)")
    ap.add_argument("--steps", type=int, default=40, help="optimiser steps per adapter")
    ap.add_argument("--suite", type=Path, help="task suite folder (default: the default suite)")
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = ap.parse_args()
    if args.count < 1 or args.steps < 1:
        ap.error("--count and --steps must be positive")
    import dataclasses

    from api.cli_zoo import open_suite
    from generator.tasks.evaluation import load_base
    from generator.tasks.prompting import PromptFormat
    from generator.zoo.stacked import train_stacked
    from generator.zoo.trainer import TrainConfig, train_lora
    from registry.service import Registry

    reg = Registry()
    bm = reg.prepare_base_model(args.base_model)
    model, tokenizer = load_base(reg.base_model_path(bm.name), args.device)
    fmt = PromptFormat.for_tokenizer(tokenizer)
    tasks = [t for t in open_suite(args.suite) if not t.held_out][: args.count]
    config = dataclasses.replace(TrainConfig(), steps=args.steps)
    pairs = [(t.description, t.train) for t in tasks]
    where = f"{next(model.parameters()).device}, {torch.get_num_threads()} threads"
    print(f"{len(tasks)} tasks, {args.steps} steps x {config.batch_size} examples, {where}")

    t0 = time.perf_counter()
    alone = [train_lora(model, fmt, d, ex, config) for d, ex in pairs]
    alone_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = train_stacked(model, fmt, pairs, config)
    together_s = time.perf_counter() - t0

    print("\n| trainer | seconds per adapter | tokens/s |")
    print("|---|---:|---:|")
    for name, seconds, results in [
        ("one at a time (train_lora)", alone_s, alone),
        (f"{len(tasks)} together (train_stacked)", together_s, together),
    ]:
        tokens = sum(r.tokens for r in results)
        print(f"| {name} | {seconds / len(tasks):.2f} | {tokens / seconds:.0f} |")
    print(f"\nspeed-up of stacking: {alone_s / together_s:.2f}x")
    print("\n| task | largest weight difference | final loss alone / together |")
    print("|---|---:|---|")
    for task, a, b in zip(tasks, alone, together, strict=True):
        diff = max(float((a.weights[n] - b.weights[n]).abs().max()) for n in a.weights)
        print(f"| {task.name} | {diff:.2e} | {a.losses[-1]:.4f} / {b.losses[-1]:.4f} |")


if __name__ == "__main__":
    main()
