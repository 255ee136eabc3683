"""Which refinement settings should the few-shot path serve? Chosen on training tasks only.

    .venv/bin/python bench/fewshot_settings.py [--count 12] [--draws 1] [--k 16]
        [--configs 20:1e-3,20:3e-3] [--weighting] [--lorahub] [--tasks a,b]
        [--seed 0] [--report]

A leave-one-out study: for a stratified random sample of the suite's
*training* tasks (round robin over the families, ``--seed`` fixing the
order), each task's own zoo adapter is put out of the serving SG-LoRA
generator's reach (``Generator.without``: the request sees the other experts
only, as a new task would), ``--k`` examples are drawn from the task's
training split (the draws ``loramint eval fewshot`` makes), and the served
few-shot path (selection, then refinement with each ``STEPS:LR`` of
``--configs``) makes an adapter that is scored on the task's test split. The
bare model, the nearest remaining expert, selection alone and the task's own
adapter (its oracle) are scored beside them; with ``--weighting``, so is the
served weighting of the nearest remaining experts; with ``--lorahub``, so is
the LoraHub baseline of ``loramint eval fewshot`` (its search over the 20
nearest remaining experts, on the same examples).

Held-out tasks are never touched, so whatever this chooses can be measured on
them afterwards without having been tuned on them. The generator network
itself was trained with every training task; only its expert mixture leaves
the task out, so the zero-shot candidate is a little better than a new task's
would be.

The report gives each method's mean accuracy and share of the oracle's gain
over the bare model, and each configuration's paired difference to the first
one (to the weighting when ``--configs`` is empty), with a 95 % bootstrap
interval over the (task, draw) pairs. Cells are kept
in ``$LORAMINT_HOME/results/fewshot-settings-<base>.json`` after each one (a
stopped run resumes); ``--report`` prints the table of that file again. Runs
of disjoint ``--tasks`` lists may share the file side by side (each cell is
merged in under a lock).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


Config = tuple[int, float]  # (steps, learning rate)


def parse_configs(text: str, allow_none: bool = False) -> list[Config]:
    """ "20:1e-3,40:3e-3" -> [(20, 0.001), (40, 0.003)]; "" -> [] if ``allow_none``."""
    out: list[Config] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        fields = part.split(":")
        try:
            if len(fields) != 2:
                raise ValueError(part)
            out.append((int(fields[0]), float(fields[1])))
        except ValueError:
            raise SystemExit(f"--configs takes STEPS:LR, got {part!r}") from None
        if out[-1][0] < 1 or not 0 < out[-1][1] < 1:
            raise SystemExit(f"--configs: steps must be >= 1 and 0 < lr < 1, got {part!r}")
    if not out and not allow_none:
        raise SystemExit("--configs names no configuration: give one, or --weighting")
    return out


def label(config: Config) -> str:
    return f"refine {config[0]}:{config[1]:g}"


def stratified(tasks: list[Any], count: int, seed: int) -> list[Any]:
    """Up to ``count`` tasks, taken round robin over the families in a seeded order."""
    rng = random.Random(f"fewshot-settings|{seed}")
    families: dict[str, list[Any]] = defaultdict(list)
    for t in sorted(tasks, key=lambda t: t.name):
        families[t.family].append(t)
    queues = []
    for name in sorted(families):
        members = families[name][:]
        rng.shuffle(members)
        queues.append(members)
    rng.shuffle(queues)
    out: list[Any] = []
    while len(out) < count and any(queues):
        for q in queues:
            if q and len(out) < count:
                out.append(q.pop())
    return out


def bootstrap(diffs: np.ndarray, seed: int, n: int = 4000) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``diffs``, resampling its entries."""
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n, len(diffs)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def report(data: dict[str, Any]) -> str:
    cells: dict[str, float] = data["cells"]
    # a truthy third field is an option since taken out (refit, bags, a pull, or-lorahub,
    # balanced, choose, b-only, balanced-start, balanced-loss, multitask, fallback, keep,
    # margin, dropout): files made with one report their other configurations
    configs = [(int(c[0]), float(c[1])) for c in data["configs"] if not c[2:] or not c[2]]
    tasks, draws = data["tasks"], int(data["draws"])
    hub = ["lorahub"] if data.get("lorahub") else []
    # a file from the study of free weights (docs/experiments.md, 2026-12-07) also
    # holds "weighting linear", a form since taken out: its other rows are reported
    weighted = ["weighting"] if data.get("weighting") else []
    refined = [label(c) for c in configs]
    methods = ["bare", "nearest", "selection", *hub, *weighted, *refined, "oracle"]
    reference = (refined or weighted)[0]

    def get(task: str, method: str, d: int) -> float | None:
        fixed = method in ("bare", "nearest", "oracle")
        return cells.get(f"{task}|{'-' if fixed else d}|{method}")

    units = [
        (t, d) for t in tasks for d in range(draws)
        if all(get(t, m, d) is not None for m in methods)
    ]  # fmt: skip
    if not units:
        return "no complete (task, draw) pair yet\n"
    lines = [
        f"{len(units)} (task, draw) pairs over {len({t for t, _ in units})} training tasks, "
        f"k = {data['k']}, each task's own expert left out\n",
        f"| method | accuracy | share of the oracle's gain | difference to {reference} (95 % CI) |",
        "|---|---:|---:|---:|",
    ]
    first = np.array([get(t, reference, d) for t, d in units])
    for m in methods:
        acc = np.array([get(t, m, d) for t, d in units], dtype=float)
        bare = np.array([get(t, "bare", d) for t, d in units], dtype=float)
        oracle = np.array([get(t, "oracle", d) for t, d in units], dtype=float)
        gain = oracle - bare
        ok = np.abs(gain) >= 0.05  # a share of a gain near zero says nothing
        share = float(np.mean((acc[ok] - bare[ok]) / gain[ok])) if ok.any() else float("nan")
        diff = acc - first
        lo, hi = bootstrap(diff, int(data["seed"]))
        lines.append(
            f"| {m} | {acc.mean():.3f} | {share:.1%} | {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] |"
        )
    lines.append("\nPer task (mean over draws):\n")
    lines.append("| task | family | " + " | ".join(methods) + " |")
    lines.append("|---|---|" + "---:|" * len(methods))
    for t in dict.fromkeys(t for t, _ in units):
        ds = [d for u, d in units if u == t]
        row = [np.mean([get(t, m, d) for d in ds]) for m in methods]
        lines.append(
            f"| {t} | {data['families'][t]} | " + " | ".join(f"{x:.3f}" for x in row) + " |"
        )
    return "\n".join(lines) + "\n"


def keep(path: Path, data: dict[str, Any], key: str, accuracy: float) -> None:
    """Add a cell to the results file, merged with what other runs of the same binding
    (``--tasks`` parts side by side) kept there meanwhile: their cells, and their tasks
    after ours (``update_atomic`` holds the file's lock from the read to the write)."""
    from registry.blobs import update_atomic

    data["cells"][key] = accuracy

    def merged(before: bytes | None) -> bytes:
        kept = json.loads(before) if before is not None else {}
        if kept.get("binding") == data["binding"]:
            data["cells"] = kept["cells"] | data["cells"]
            data["tasks"] += [t for t in kept["tasks"] if t not in data["tasks"]]
            data["families"] = kept["families"] | data["families"]
        return json.dumps(data, indent=1).encode()

    update_atomic(path, merged)


def named(pool: list[Any], text: str, what: str) -> list[Any]:
    """The tasks of ``pool`` named in the comma-separated ``text``; a name that is not
    in ``pool`` stops the run, naming ``what`` the tasks had to be."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    chosen = [t for t in pool if t.name in names]
    missing = sorted(set(names) - {t.name for t in chosen})
    if missing:
        raise SystemExit(f"not {what}: {missing}")
    return chosen


def bound(path: Path, binding: dict[str, Any], entries: str) -> dict[str, Any]:
    """The results kept at ``path`` (empty ``entries`` if none); a file whose entries
    were made under another ``binding`` stops the run rather than be mixed into."""
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {entries: {}}
    if data[entries] and data.get("binding") != binding:
        raise SystemExit(f"{path} was made with {data.get('binding')}, not {binding}: move it away")
    return data


def open_serving(base_model: str) -> tuple[Any, Any, Any, Any, dict[str, int]]:
    """The registry, the default suite, the base model's evaluator, the serving SG-LoRA
    generator, and every suite task's registered zoo adapter id by task name."""
    from api.cli_zoo import open_suite
    from generator.serve.generate import generator_for
    from generator.serve.generator import Generator
    from generator.tasks.evaluation import Evaluator
    from generator.zoo.build import adapter_name
    from registry.service import Registry

    reg = Registry()
    suite = open_suite(None, build=False)
    evaluator = Evaluator.from_path(reg.base_model_path(base_model))
    sg = Generator.from_registry(reg, generator_for(reg, base_model, "sg-lora"), base=evaluator)
    registered: dict[str, int] = {}
    for t in suite:
        rec = reg.find_adapter(base_model, adapter_name(t))
        if rec is not None:
            registered[t.name] = rec.id
    return reg, suite, evaluator, sg, registered


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--count", type=int, default=12, help="training tasks to sample")
    ap.add_argument("--tasks", help="comma-separated training tasks instead of a sample")
    ap.add_argument("--draws", type=int, default=1)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--configs", default="20:1e-3,20:3e-3", help="refinement STEPS:LR list")
    ap.add_argument("--weighting", action="store_true", help="score the served weighting too")
    ap.add_argument("--lorahub", action="store_true", help="score the LoraHub baseline too")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report", action="store_true", help="print the kept results and stop")
    args = ap.parse_args()
    if args.count < 1 or args.draws < 1 or args.k < 2:
        raise SystemExit("--count and --draws must be >= 1, --k >= 2")
    configs = parse_configs(args.configs, allow_none=args.weighting)

    from registry.settings import get_settings

    path = get_settings().results_dir / f"fewshot-settings-{args.base_model}.json"
    if args.report:
        if not path.exists():
            raise SystemExit(f"{path} does not exist: run without --report first")
        sys.stdout.write(report(json.loads(path.read_text())))
        return

    from generator.adapt.pipeline import AdaptConfig
    from generator.quality.fewshot import draw
    from generator.quality.heldout import oracle_weights
    from generator.quality.lorahub import lorahub
    from generator.serve.fewshot import adapt_generated
    from generator.serve.generator import Request

    reg, suite, evaluator, sg, registered = open_serving(args.base_model)
    own = {n: i for n, i in registered.items() if i in sg.ckpt.expert_ids}
    pool = [t for t in suite if not t.held_out and t.is_classification and t.name in own]
    if args.tasks:
        chosen = named(pool, args.tasks, "training tasks with an expert of the generator")
    else:
        chosen = stratified(pool, args.count, args.seed)
    binding = {"generator": sg.id, "k": args.k, "seed": args.seed}
    data = bound(path, binding, "cells")
    data.update(
        binding=binding, k=args.k, seed=args.seed, draws=args.draws,
        configs=[list(c) for c in configs], weighting=args.weighting, lorahub=args.lorahub,
        tasks=[t.name for t in chosen],
        families={t.name: t.family for t in chosen},
    )  # fmt: skip

    def cell(key: str, make: Any, task: Any) -> None:
        if key in data["cells"]:
            return
        t0 = time.perf_counter()
        adapter = make()
        made = time.perf_counter() - t0
        accuracy = round(evaluator.accuracy(task, adapter).accuracy, 4)
        keep(path, data, key, accuracy)
        print(f"{key}: {accuracy:.3f} ({made:.1f} s to the adapter)", flush=True)

    for task in chosen:
        with sg.without([own[task.name]]):
            zero_shot = sg.generate([Request(task.description, seed=args.seed)])[0]
            query = np.asarray(zero_shot.embedding, dtype=np.float32)
            experts = sg.neighbours(query / np.linalg.norm(query), 20)[0]
            nearest = experts[0]
            template = dict(zero_shot.config)
            cell(f"{task.name}|-|bare", lambda: None, task)
            cell(
                f"{task.name}|-|nearest",
                lambda e=nearest, c=template: (c, sg.ckpt.layout.unflatten(e.weights)),
                task,
            )
            cell(
                f"{task.name}|-|oracle",
                lambda t=task: oracle_weights(reg, args.base_model, t),
                task,
            )
            for d in range(args.draws):
                shots = draw(task, args.k, d, args.seed)
                runs = {"selection": AdaptConfig(estimate=False, seed=args.seed)}
                if args.weighting:
                    runs["weighting"] = AdaptConfig(weighting=True, estimate=False, seed=args.seed)
                for c in configs:
                    runs[label(c)] = AdaptConfig(
                        refine_steps=c[0],
                        refine_lr=c[1],
                        estimate=False,
                        seed=args.seed,
                    )
                for method, config in runs.items():
                    request = Request(task.description, seed=args.seed, fewshot=shots, adapt=config)

                    def make(r: Request = request, z: Any = zero_shot) -> Any:
                        made = adapt_generated(sg, r, z)
                        return (dict(made.config), made.weights)

                    cell(f"{task.name}|{d}|{method}", make, task)
                if args.lorahub:

                    def hub(
                        t: Any = task, z: Any = zero_shot, s: Any = shots, near: Any = experts
                    ) -> Any:
                        found = lorahub(
                            evaluator, t.description, s.examples, dict(z.config),
                            [sg.ckpt.layout.unflatten(e.weights) for e in near],
                            seed=args.seed,
                        )  # fmt: skip
                        return found.adapter

                    cell(f"{task.name}|{d}|lorahub", hub, task)
    sys.stdout.write(report(data))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
