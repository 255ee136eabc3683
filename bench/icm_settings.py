"""Which task vectors should ICM-LoRA train on? Chosen on training tasks only.

    .venv/bin/python bench/icm_settings.py [--seeds 0,1,2,3,4] [--modes raw,standardised]
        [--k 16] [--report]

For each training seed and task-vector mode (``GeneratorConfig.task_vector_mode``),
ICM-LoRA is trained on the registry's training experts and registered as
``icm-settings-<mode>-<seed>`` (a stopped run finds it again). The experts its
seed holds back for validation (15 %) are tasks its network never trained on;
their validation only chose which training state to keep. For each of those
tasks, ``--k`` examples are drawn from the task's training split (the draw
``loramint eval fewshot`` makes first), the generator makes an adapter from the
description with the examples and without them, and each is scored on the
task's test split beside the bare model and the task's own adapter (the oracle).

Held-out tasks are never touched. The report gives each (mode, with or without
examples) mean accuracy over the (task, seed) pairs, its share of the oracle's
gain over the bare model, and its paired difference to the first mode's, with
a 95 % bootstrap interval over the pairs. Cells are kept in
``$LORAMINT_HOME/results/icm-settings-<base>.json`` after each one; ``--report``
prints the table of that file again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fewshot_settings import bootstrap  # noqa: E402

USES = ("examples", "description")  # with the k examples' task vector; description alone


def report(data: dict[str, Any]) -> str:
    cells: dict[str, float] = data["cells"]
    modes, seeds = data["modes"], data["seeds"]
    methods = ["bare", *(f"{m} {u}" for u in USES for m in modes), "oracle"]

    def get(task: str, seed: int, method: str) -> float | None:
        if method in ("bare", "oracle"):
            return cells.get(f"{task}|-|{method}")
        mode, use = method.split(" ")
        return cells.get(f"{task}|{seed}|{mode}|{use}")

    units = [
        (t, s) for s in seeds for t in data["validation"].get(str(s), [])
        if all(get(t, s, m) is not None for m in methods)
    ]  # fmt: skip
    if not units:
        return "no complete (task, seed) pair yet\n"
    lines = [
        f"{len(units)} (task, seed) pairs over {len({t for t, _ in units})} training tasks "
        f"and {len({s for _, s in units})} seeds, k = {data['k']}; each task among its "
        "seed's validation experts, never trained on\n",
        f"| method | accuracy | share of the oracle's gain | difference to {modes[0]} with "
        "the same input (95 % CI) |",
        "|---|---:|---:|---:|",
    ]
    bare = np.array([get(t, s, "bare") for t, s in units], dtype=float)
    oracle = np.array([get(t, s, "oracle") for t, s in units], dtype=float)
    gain = oracle - bare
    ok = np.abs(gain) >= 0.05  # a share of a gain near zero says nothing
    for m in methods:
        acc = np.array([get(t, s, m) for t, s in units], dtype=float)
        share = float(np.mean((acc[ok] - bare[ok]) / gain[ok])) if ok.any() else float("nan")
        diff_text = ""
        if " " in m:
            first = f"{modes[0]} {m.split(' ')[1]}"
            diff = acc - np.array([get(t, s, first) for t, s in units], dtype=float)
            lo, hi = bootstrap(diff, 0)
            diff_text = f"{diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"
        lines.append(f"| {m} | {acc.mean():.3f} | {share:.1%} | {diff_text} |")
    lines.append("\nPer (task, seed):\n")
    lines.append("| task | seed | " + " | ".join(methods) + " |")
    lines.append("|---|---:|" + "---:|" * len(methods))
    for t, s in units:
        row = [get(t, s, m) for m in methods]
        lines.append(f"| {t} | {s} | " + " | ".join(f"{x:.3f}" for x in row) + " |")
    return "\n".join(lines) + "\n"


def parse_list(text: str, kind: type, what: str) -> list[Any]:
    try:
        out = [kind(p.strip()) for p in text.split(",") if p.strip()]
    except ValueError:
        raise SystemExit(f"{what}: cannot read {text!r}") from None
    if not out:
        raise SystemExit(f"{what} names nothing")
    return out


def main() -> None:
    from generator.fit.config import TASK_VECTOR_MODES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="training seeds (validation splits)")
    ap.add_argument("--modes", default=",".join(TASK_VECTOR_MODES))
    ap.add_argument("--k", type=int, default=16, help="examples drawn per task")
    ap.add_argument("--report", action="store_true", help="print the kept results and stop")
    args = ap.parse_args()
    seeds = parse_list(args.seeds, int, "--seeds")
    modes = parse_list(args.modes, str, "--modes")
    if bad := [m for m in modes if m not in TASK_VECTOR_MODES]:
        raise SystemExit(f"--modes: {bad} not among {', '.join(TASK_VECTOR_MODES)}")
    if args.k < 1 or min(seeds) < 0:
        raise SystemExit("--k must be >= 1 and --seeds >= 0")

    from registry.settings import get_settings

    path = get_settings().results_dir / f"icm-settings-{args.base_model}.json"
    if args.report:
        if not path.exists():
            raise SystemExit(f"{path} does not exist: run without --report first")
        sys.stdout.write(report(json.loads(path.read_text())))
        return

    from api.cli_zoo import open_suite
    from generator.experts import ExpertBank
    from generator.fit.config import GeneratorConfig
    from generator.fit.loop import split_experts
    from generator.fit.train import train_generator
    from generator.quality.fewshot import draw
    from generator.quality.heldout import oracle_weights
    from generator.serve.generator import Generator, Request
    from generator.tasks.evaluation import Evaluator
    from registry.blobs import write_atomic
    from registry.service import Registry

    reg = Registry()
    suite = open_suite(None, build=False)
    evaluator = Evaluator.from_path(reg.base_model_path(args.base_model))
    bank = ExpertBank.from_registry(reg, args.base_model)
    task_of = bank.tasks_of(list(suite))
    binding = {"k": args.k, "experts": sorted(bank.ids)}
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"cells": {}}
    if data["cells"] and data.get("binding") != binding:
        raise SystemExit(f"{path} was made with other experts or k: move it away")
    data.update(binding=binding, k=args.k, modes=modes, seeds=seeds)
    data.setdefault("validation", {})

    def cell(key: str, make: Any, task: Any) -> None:
        if key in data["cells"]:
            return
        t0 = time.perf_counter()
        adapter = make()
        made = time.perf_counter() - t0
        data["cells"][key] = round(evaluator.accuracy(task, adapter).accuracy, 4)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(data, indent=1).encode())
        print(f"{key}: {data['cells'][key]:.3f} ({made:.1f} s to the adapter)", flush=True)

    for seed in seeds:
        val = [task_of[i] for i in split_experts(len(bank), 0.15, seed)[1] if i in task_of]
        data["validation"][str(seed)] = [t.name for t in val]
        for mode in modes:
            name = f"icm-settings-{mode}-{seed}"
            record = reg.find_generator(args.base_model, name)
            if record is None:
                t0 = time.perf_counter()
                config = GeneratorConfig(method="icm-lora", seed=seed, task_vector_mode=mode)
                record, _ = train_generator(reg, args.base_model, config, name=name)
                print(f"trained {name} ({time.perf_counter() - t0:.0f} s)", flush=True)
            icm = Generator.from_registry(reg, record, base=evaluator)
            for task in val:
                cell(f"{task.name}|-|bare", lambda: None, task)
                cell(
                    f"{task.name}|-|oracle",
                    lambda t=task: oracle_weights(reg, args.base_model, t),
                    task,
                )
                shots = draw(task, args.k, 0, 0)
                for use in USES:
                    request = Request(
                        task.description, seed=0, fewshot=shots if use == "examples" else None
                    )

                    def make(r: Request = request, g: Generator = icm) -> Any:
                        made = g.generate([r])[0]
                        return (dict(made.config), made.weights)

                    cell(f"{task.name}|{seed}|{mode}|{use}", make, task)
    sys.stdout.write(report(data))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
