"""Does a generator get better with more training tasks? Share of the oracle's gain on
the held-out tasks against the number of training tasks.

    .venv/bin/python bench/scaling.py [--suite PATH] [--sizes 25,50,100,all]
        [--method sg-lora] [--select weights] [--steps 800] [--min-gain 0.1] [--seed 0]
        [--device auto] [--report]

For each size n, the first n training tasks of one seeded order, round robin
over the families (so every set holds the smaller ones and spreads over the
families), give three columns, all scored by the held-out harness
(``generator.quality.heldout``) on the suite's held-out tasks of the training
families (``split: held_out``; suites without splits: every held-out task):

- the generator (``--method``) trained on those tasks' zoo adapters alone;
- the nearest expert among those adapters;
- the multi-task LoRA trained on those tasks, the zoo's steps per task
  (``generator.quality.multitask``).

Each is the mean share of the oracle's gain, (m - b) / (o - b), with its 95 %
bootstrap interval over tasks and test examples. The zoo must be built first
(every training task of the largest size, and every held-out task for its
oracle). Resumable: the generators (named ``scaling-<n>-<method>``) and the
multi-task LoRAs (``baseline-multitask-<n>``; ``baseline-multitask``, the one
``loramint eval generators`` scores, for all tasks) are registered as they are
trained, and each size's figures are written to
``$LORAMINT_HOME/results/scaling-<base>.json`` (with ``.md`` and ``.png``) as
it finishes; ``--report`` writes the table and plot of that file again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fewshot_settings import stratified  # noqa: E402

COLUMNS = ("generator", "nearest", "multi-task")


def parse_sizes(text: str, total: int) -> list[int]:
    """``25,50,all`` -> [25, 50, total], ascending, each in [2, total] and none twice."""
    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "all":
            sizes.append(total)
            continue
        try:
            n = int(part)
        except ValueError:
            raise SystemExit(f"--sizes takes whole numbers or 'all', got {part!r}") from None
        if not 2 <= n <= total:
            raise SystemExit(f"--sizes: {n} is not in [2, {total}], the training tasks there are")
        sizes.append(n)
    if not sizes:
        raise SystemExit("--sizes names no size")
    if len(set(sizes)) != len(sizes):
        raise SystemExit(f"--sizes repeats a size: {text!r}")
    return sorted(sizes)


def report(data: dict[str, Any]) -> str:
    sizes = sorted(data["results"], key=int)
    if not sizes:
        return "no size measured yet\n"
    lines = [
        f"Held-out tasks: {data['tasks']} kept ({', '.join(data['dropped']) or 'none'} dropped: "
        f"the oracle gains less than {data['min_gain']}). Generator: {data['method']}. Mean "
        "share of the oracle's gain, 95 % bootstrap intervals over tasks and test examples.\n",
        "| training tasks | families | " + " | ".join(COLUMNS) + " |",
        "|---:|---:|" + "---:|" * len(COLUMNS),
    ]
    for n in sizes:
        r = data["results"][n]
        cells = [f"{r[c]['value']:.1%} [{r[c]['low']:.1%}, {r[c]['high']:.1%}]" for c in COLUMNS]
        lines.append(f"| {n} | {r['families']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    sizes = sorted(data["results"], key=int)
    x = [int(n) for n in sizes]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for c in COLUMNS:
        est = [data["results"][n][c] for n in sizes]
        values = [e["value"] for e in est]
        errors = [[e["value"] - e["low"] for e in est], [e["high"] - e["value"] for e in est]]
        label = data["method"] if c == "generator" else c
        ax.errorbar(x, values, yerr=errors, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(x, [str(n) for n in x])
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("training tasks")
    ax.set_ylabel("share of the oracle's gain (held-out tasks)")
    ax.set_title(f"Scaling, {data['base_model']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def write(data: dict[str, Any], path: Path) -> None:
    from registry.blobs import write_atomic

    write_atomic(path, json.dumps(data, indent=1).encode())
    write_atomic(path.with_suffix(".md"), report(data).encode())
    if data["results"]:
        plot(data, path.with_suffix(".png"))


def run(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    from generator.experts import ExpertBank
    from generator.fit.config import GeneratorConfig
    from generator.fit.train import train_generator
    from generator.quality import multitask
    from generator.quality.heldout import evaluate, sg_guidance, sg_settings
    from generator.serve.generator import Generator
    from generator.tasks.evaluation import Evaluator
    from generator.tasks.task import TaskSuite
    from generator.zoo.build import adapter_name
    from registry.service import Registry

    suite = TaskSuite(args.suite)
    if not suite.exists():
        raise SystemExit(f"no task suite at {args.suite} (it needs a manifest.json)")
    reg = Registry()
    bm = reg.prepare_base_model(args.base_model)
    training = [t for t in suite if not t.held_out]
    held = [t for t in suite if t.held_out and t.meta.get("split", "held_out") == "held_out"]
    if not held:
        raise SystemExit(f"{args.suite} has no held-out task of a training family")
    sizes = parse_sizes(args.sizes, len(training))
    order = stratified(training, len(training), args.seed)
    ids = {}
    for t in order[: sizes[-1]]:
        rec = reg.find_adapter(bm.name, adapter_name(t))
        if rec is None:
            raise SystemExit(f"no zoo adapter for {t.name}: build the zoo first")
        ids[t.name] = rec.id
    binding = {"suite": str(args.suite), "base_model": bm.name, "method": args.method,
               "select": args.select, "steps": args.steps, "seed": args.seed,
               "min_gain": args.min_gain}  # fmt: skip
    data = json.loads(path.read_text()) if path.exists() else {"results": {}}
    if data["results"] and data.get("binding") != binding:
        raise SystemExit(f"{path} was made with {data.get('binding')}, not {binding}: move it away")
    data.update(binding=binding, base_model=bm.name, method=args.method, min_gain=args.min_gain)
    evaluator = Evaluator.from_path(reg.base_model_path(bm.name), device=args.device)
    for n in sizes:
        if str(n) in data["results"]:
            continue
        subset = order[:n]
        print(f"{n} training tasks: the generator", flush=True)
        name = f"scaling-{n}-{args.method}"
        found = [g for g in reg.list_generators(base_model=bm.name, limit=1000) if g.name == name]
        config = GeneratorConfig(method=args.method, select=args.select, steps=args.steps)
        gen_rec = found[0] if found else train_generator(
            reg, bm.name, config, name=name, tasks=subset,
            expert_ids=[ids[t.name] for t in subset], device=args.device,
        )[0]  # fmt: skip
        print(f"{n} training tasks: the multi-task LoRA", flush=True)
        mt_name = multitask.NAME if n == len(training) else f"{multitask.NAME}-{n}"
        multitask.train(reg, bm.name, subset, name=mt_name, device=args.device)
        gens = {args.method: Generator.from_registry(reg, gen_rec)}
        bank = ExpertBank.from_registry(reg, bm.name, ids=gen_rec.training_adapter_ids)
        k, tau = sg_settings(gens) or (4, 0.05)
        rep = evaluate(
            reg, evaluator, held, base_model=bm.name, generators=gens, bank=bank, k=k, tau=tau,
            guidance=sg_guidance(gens), multitask=multitask.load(reg, bm.name, mt_name),
            min_gain=args.min_gain, on_task=lambda t: print(f"  scoring {t}", flush=True),
        )  # fmt: skip
        summary = rep.summaries()["held_out"]
        shares = {c: summary.gain_share[c].to_json() for c in ("nearest", "multi-task")}
        data["results"][str(n)] = {
            "generator": summary.gain_share[args.method].to_json(),
            **shares,
            "generator_id": gen_rec.id,
            "families": len({t.family for t in subset}),
        }
        data["tasks"] = summary.tasks
        data["dropped"] = [r.task for r in rep.dropped]
        write(data, path)
        print(report(data), flush=True)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--suite", type=Path, help="task suite folder (default: v2)")
    ap.add_argument("--sizes", default="25,50,100,all")
    ap.add_argument("--method", default="sg-lora", choices=("sg-lora", "icm-lora"))
    ap.add_argument("--select", default="weights", choices=("weights", "task"))
    ap.add_argument("--steps", type=int, default=800, help="the generator's optimiser steps")
    ap.add_argument("--min-gain", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--report", action="store_true", help="write the kept results again")
    args = ap.parse_args()
    if args.steps < 1:
        raise SystemExit(f"--steps must be at least 1, got {args.steps}")
    if not 0 < args.min_gain <= 1:
        raise SystemExit(f"--min-gain must be in (0, 1], got {args.min_gain}")

    from registry.errors import LoramintError
    from registry.settings import get_settings

    settings = get_settings()
    args.suite = args.suite or settings.tasks_dir / "v2"
    path = settings.results_dir / f"scaling-{args.base_model.replace('/', '_')}.json"
    if args.report:
        if not path.exists():
            raise SystemExit(f"{path} does not exist: run without --report first")
        data = json.loads(path.read_text())
        write(data, path)
        sys.stdout.write(report(data))
        return
    try:
        run(args, path)
    except LoramintError as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(f"results: {path} (table {path.with_suffix('.md')}, plot {path.with_suffix('.png')})")


if __name__ == "__main__":
    main()
