"""Which recipe should a large zoo train with? Expert quality against cost, on training tasks.

    .venv/bin/python bench/zoo_recipe.py [--suite PATH] [--count 10]
        [--recipes 40x16,20x16,40x8,20x8] [--seed 0] [--device auto] [--report]

    .venv/bin/python bench/zoo_recipe.py --device cuda --recipes 40x16,40x16@tf32

A zoo of hundreds of tasks costs hundreds of trainings: at the zoo's recipe
(40 steps of 16 examples, prompts cut at 320 tokens) one adapter takes 1.5-3.5
min on 2 CPU cores. This measures what cheaper recipes lose. For a stratified
random sample of the suite's *training* tasks (round robin over the families,
``--seed`` fixing the order; default suite: v2 under ``$LORAMINT_HOME/tasks/v2``,
built when missing), each recipe ``STEPSxBATCH`` (or ``STEPSxBATCH:TOKENS``, the
prompt cut; a trailing ``@tf32`` lets a CUDA device multiply float32 on its
TF32 tensor cores while that recipe trains) trains the task's LoRA as
``loramint zoo build`` would (the same rank, learning rate, warm-up, shared A
and per-task data order), and the adapter is scored on the task's test split,
in full float32, beside the bare model. Nothing is registered. Held-out tasks
are never touched.

The report gives each recipe's mean accuracy, its share of the first recipe's
gain over the bare model, its paired difference to the first recipe with a
95 % bootstrap interval over the tasks, and its mean training seconds per
adapter with the speed-up. Cells are kept in
``$LORAMINT_HOME/results/zoo-recipe-<suite>-<base>.json`` after each one (a
stopped run resumes); ``--report`` prints the table of that file again.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fewshot_settings import bootstrap, stratified  # noqa: E402

# steps, batch size, prompt cut (None: the zoo's), TF32 products on a CUDA device
Recipe = tuple[int, int, int | None, bool]
RECIPE = re.compile(r"^(\d+)x(\d+)(?::(\d+))?(@tf32)?$")


def parse_recipes(text: str) -> list[Recipe]:
    """``40x16,20x8:128@tf32`` -> [(40, 16, None, False), (20, 8, 128, True)]; the first is
    the reference."""
    out: list[Recipe] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = RECIPE.match(part)
        if m is None:
            raise SystemExit(f"a recipe is STEPSxBATCH[:TOKENS][@tf32], got {part!r}")
        steps, batch = int(m[1]), int(m[2])
        tokens = int(m[3]) if m[3] else None
        if steps < 1 or batch < 1 or (tokens is not None and tokens < 9):
            raise SystemExit(f"{part!r}: steps and batch must be >= 1, tokens >= 9")
        out.append((steps, batch, tokens, m[4] is not None))
    if not out:
        raise SystemExit("--recipes names no recipe")
    if len(set(out)) != len(out):
        raise SystemExit(f"--recipes repeats a recipe: {text!r}")
    return out


def label(recipe: Recipe) -> str:
    steps, batch, tokens, tf32 = recipe
    return f"{steps}x{batch}" + (f":{tokens}" if tokens is not None else "") + "@tf32" * tf32


def kept_recipe(fields: list[Any]) -> Recipe:
    """A recipe as the results file keeps it (files from before ``@tf32``: three fields)."""
    steps, batch, tokens, *rest = fields
    return (int(steps), int(batch), tokens, bool(rest and rest[0]))


@contextlib.contextmanager
def products(recipe: Recipe, device: torch.device) -> Iterator[None]:
    """The float32 products a recipe trains with: TF32 on a CUDA device for ``@tf32``
    recipes, full float32 otherwise; the process's setting is restored after."""
    if not recipe[3]:
        yield
        return
    if device.type != "cuda":
        raise SystemExit(f"{label(recipe)}: TF32 needs a CUDA device (--device cuda)")
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision = before


def report(data: dict[str, Any]) -> str:
    """The table of kept cells: tasks where every recipe and the bare model are scored."""
    cells: dict[str, dict[str, float]] = data["cells"]
    recipes = [label(kept_recipe(r)) for r in data["recipes"]]
    tasks = [
        t
        for t in data["tasks"]
        if f"{t}|bare" in cells and all(f"{t}|{r}" in cells for r in recipes)
    ]
    if not tasks:
        return "no task has every recipe scored yet\n"
    bare = np.array([cells[f"{t}|bare"]["accuracy"] for t in tasks])
    reference = np.array([cells[f"{t}|{recipes[0]}"]["accuracy"] for t in tasks])
    seconds0 = np.mean([cells[f"{t}|{recipes[0]}"]["seconds"] for t in tasks])
    gain = reference - bare
    ok = np.abs(gain) >= 0.05  # a share of a gain near zero says nothing
    lines = [
        f"{len(tasks)} training tasks of {len({data['families'][t] for t in tasks})} families; "
        f"shares over the {int(ok.sum())} where {recipes[0]} gains at least 0.05\n",
        f"| recipe | accuracy | share of {recipes[0]}'s gain | difference to {recipes[0]} "
        "(95 % CI) | seconds per adapter | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
        f"| bare model | {bare.mean():.3f} | 0.0% | {(bare - reference).mean():+.3f} | - | - |",
    ]
    for r in recipes:
        acc = np.array([cells[f"{t}|{r}"]["accuracy"] for t in tasks])
        secs = float(np.mean([cells[f"{t}|{r}"]["seconds"] for t in tasks]))
        share = float(np.mean((acc[ok] - bare[ok]) / gain[ok])) if ok.any() else float("nan")
        diff = acc - reference
        lo, hi = bootstrap(diff, int(data["seed"]))
        lines.append(
            f"| {r} | {acc.mean():.3f} | {share:.1%} | {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] "
            f"| {secs:.0f} | {seconds0 / secs:.2f}x |"
        )
    lines += [
        "\nPer task (accuracy; seconds):\n",
        "| task | family | bare | " + " | ".join(recipes),
    ]
    lines[-1] += " |"
    lines.append("|---|---|---:|" + "---:|" * len(recipes))
    for t in tasks:
        row = [
            f"{cells[f'{t}|{r}']['accuracy']:.3f}; {cells[f'{t}|{r}']['seconds']:.0f}"
            for r in recipes
        ]
        lines.append(
            f"| {t} | {data['families'][t]} | {cells[f'{t}|bare']['accuracy']:.3f} | "
            + " | ".join(row)
            + " |"
        )
    return "\n".join(lines) + "\n"


def v2_suite(given: Path | None, root: Path) -> Any:
    """The task suite at ``given``, which must exist; else suite v2 at ``root``, built
    there (seed 0) when missing."""
    from generator.tasks.task import TaskSuite

    suite = TaskSuite(root)
    if not suite.exists():
        if given is not None:
            raise SystemExit(f"no task suite at {root} (it needs a manifest.json)")
        from generator.tasks.suite.v2 import build_suite_v2

        print(f"building task suite v2 in {root}", flush=True)
        build_suite_v2(root, seed=0)
    return suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--suite", type=Path, help="task suite folder (default: v2, built if missing)")
    ap.add_argument("--count", type=int, default=10, help="training tasks to sample")
    ap.add_argument("--recipes", default="40x16,20x16,40x8,20x8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--report", action="store_true", help="print the kept results and stop")
    args = ap.parse_args()
    if args.count < 1:
        raise SystemExit("--count must be >= 1")
    recipes = parse_recipes(args.recipes)

    from registry.blobs import write_atomic
    from registry.settings import get_settings

    settings = get_settings()
    root = args.suite or settings.tasks_dir / "v2"
    path = settings.results_dir / f"zoo-recipe-{root.name}-{args.base_model}.json"
    if args.report:
        if not path.exists():
            raise SystemExit(f"{path} does not exist: run without --report first")
        sys.stdout.write(report(json.loads(path.read_text())))
        return

    from generator.tasks.device import resolve_device
    from generator.tasks.evaluation import Evaluator, load_base
    from generator.zoo.build import task_seed
    from generator.zoo.trainer import TrainConfig, train_lora
    from registry.errors import LoramintError
    from registry.service import Registry

    try:
        device = resolve_device(args.device)
        if device.type != "cuda" and any(r[3] for r in recipes):
            raise SystemExit(
                f"@tf32 recipes need a CUDA device; --device {args.device} is {device}"
            )
        suite = v2_suite(args.suite, root)
        reg = Registry(settings)
        bm = reg.prepare_base_model(args.base_model)
        model, tokenizer = load_base(reg.base_model_path(bm.name), str(device))
    except LoramintError as exc:
        raise SystemExit(f"error: {exc}") from exc
    evaluator = Evaluator(model, tokenizer)
    pool = [t for t in suite if not t.held_out and t.is_classification]
    chosen = stratified(pool, args.count, args.seed)
    binding = {"suite": str(root), "base_model": bm.name, "seed": args.seed}
    data = json.loads(path.read_text()) if path.exists() else {"cells": {}}
    if data["cells"] and data.get("binding") != binding:
        raise SystemExit(f"{path} was made with {data.get('binding')}, not {binding}: move it away")
    data.update(
        binding=binding, seed=args.seed, recipes=[list(r) for r in recipes],
        tasks=[t.name for t in chosen], families={t.name: t.family for t in chosen},
    )  # fmt: skip

    def keep(key: str, cell: dict[str, float]) -> None:
        data["cells"][key] = cell
        write_atomic(path, json.dumps(data, indent=1).encode())
        print(f"{key}: {json.dumps(cell)}", flush=True)

    for i, task in enumerate(chosen, 1):
        print(f"task {i}/{len(chosen)}: {task.name} ({task.family})", flush=True)
        if f"{task.name}|bare" not in data["cells"]:
            keep(f"{task.name}|bare", {"accuracy": round(evaluator.accuracy(task).accuracy, 4)})
        for recipe in recipes:
            key = f"{task.name}|{label(recipe)}"
            if key in data["cells"]:
                continue
            steps, batch, tokens, _ = recipe
            config = TrainConfig(steps=steps, batch_size=batch, seed=task_seed(task, 0))
            if tokens is not None:
                config = dataclasses.replace(config, max_prompt_tokens=tokens)
            with products(recipe, device):  # scoring below stays full float32
                result = train_lora(
                    evaluator.model, evaluator.format, task.description, task.train, config
                )
            acc = evaluator.accuracy(task, (result.peft_config, result.weights)).accuracy
            keep(key, {"accuracy": round(acc, 4), "seconds": round(result.seconds, 2)})
    sys.stdout.write(report(data))


if __name__ == "__main__":
    main()
