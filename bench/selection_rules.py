"""Which score should few-shot selection choose its candidate by? Chosen on training tasks.

    .venv/bin/python bench/selection_rules.py [--count 20] [--tasks a,b] [--pool 96]
        [--k 16] [--draws 500] [--experts 3] [--seed 0] [--held-out] [--report]

Selection scores every candidate (the zero-shot adapter, the nearest experts,
their mixtures, no adapter) on the caller's examples and keeps the best. With
16 examples "best" is noisy, and what it is measured by matters: accuracy moves
in steps of 1/16 and ties often, while the log-probability of the right label
(or its probability) is smooth but weighs confident mistakes differently; and a
draw that happens to hold more of one label favours a candidate leaning to it,
which the mean of each label's own accuracy does not.

For each task of a stratified sample of the suite's *training* tasks (each with
its own expert put out of the generator's reach, as in
``bench/fewshot_settings.py``), every candidate the served few-shot path offers
is scored once on a pool of ``--pool`` examples from the task's training split
and once on its test split. A draw of ``--k`` examples is then a subset of the
pool, and every rule's choice on it costs nothing: ``--draws`` draws a task give
each rule's expected test accuracy on that task with little draw noise. The
report gives each rule's mean over tasks and its paired difference to the rule
the service uses, with a 95 % bootstrap interval over tasks, beside the bare
model, the nearest expert, the best candidate on the test split (what a perfect
rule would reach) and the task's own adapter (its oracle). With ``--experts N``
(above the 3 the service offers) the next nearest experts alone are scored too,
and a row gives the served rule's pick when they are offered as well.

``--held-out`` scores the suite's held-out tasks instead (after a rule was
chosen on the training tasks; their figures must not choose it). Per-task
scores are kept in ``$LORAMINT_HOME/results/selection-rules-<base>[-held-out].json``
after each task (a stopped run resumes); ``--report`` prints that file's table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fewshot_settings import bootstrap, bound, named, open_serving, stratified  # noqa: E402

# A rule maps one candidate's (right, log p(right label)) on the drawn examples, and those
# examples' right labels, to a key; the largest key wins, ties going to the one listed first.
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[float, ...]]


def each_label(right: np.ndarray, logp: np.ndarray, gold: np.ndarray) -> tuple[float, ...]:
    """Accuracy, then log-likelihood, each the mean of the labels' own means (balanced
    accuracy: what ``generator.adapt.selection.best`` compares by)."""
    labels = np.unique(gold)
    return tuple(float(np.mean([v[gold == y].mean() for y in labels])) for v in (right, logp))


RULES: dict[str, Rule] = {
    "accuracy, then log-likelihood": lambda r, lp, _: (float(r.mean()), float(lp.mean())),
    "log-likelihood": lambda r, lp, _: (float(lp.mean()),),
    "probability of the right label": lambda r, lp, _: (float(np.exp(lp).mean()),),
    "each label's accuracy, then log-likelihood": each_label,
}
SERVED = "each label's accuracy, then log-likelihood"  # generator.adapt.selection.best's


def served(task: dict[str, Any]) -> list[str]:
    """The candidates the service offers, in its order (``--experts`` extras left out)."""
    return [n for n in task["candidates"] if n not in task.get("extra", [])]


def wider(task: dict[str, Any]) -> list[str]:
    """The served candidates with the extra experts alone after the served ones."""
    names = served(task)
    last = max(i for i, n in enumerate(names) if n.startswith("expert:"))
    return names[: last + 1] + list(task.get("extra", [])) + names[last + 1 :]


def choose(task: dict[str, Any], idx: np.ndarray, rule: Rule, names: list[str]) -> str:
    """The candidate of ``names`` the rule picks on pool examples ``idx``."""
    cands, gold = task["candidates"], np.asarray(task["pool_gold"])[idx]
    keys = {
        n: rule(
            np.asarray(cands[n]["pool_right"])[idx], np.asarray(cands[n]["pool_logp"])[idx], gold
        )
        for n in names
    }
    return max(names, key=lambda n: (*keys[n], -names.index(n)))


def expected(
    task: dict[str, Any], rule: Rule, k: int, draws: int, seed: int, names: list[str]
) -> float:
    """The mean test accuracy of the rule's pick among ``names`` over ``draws`` draws of
    ``k`` pool examples (the same draws for every rule and set)."""
    rng = np.random.default_rng([seed, *task["name"].encode()])
    n = len(task["candidates"]["none"]["pool_right"])
    picks = [choose(task, rng.choice(n, size=k, replace=False), rule, names) for _ in range(draws)]
    return float(np.mean([task["candidates"][p]["test"] for p in picks]))


def report(data: dict[str, Any], k: int, draws: int) -> str:
    tasks = list(data["tasks"].values())
    if not tasks:
        return "no task scored yet\n"
    if any("pool_gold" not in t for t in tasks):  # kept before the labels were
        return "the file lacks its pools' labels: run again without --report to add them\n"
    seed = int(data["seed"])
    cols: dict[str, np.ndarray] = {
        "bare": np.array([t["candidates"]["none"]["test"] for t in tasks]),
        "nearest expert": np.array([t["candidates"][t["nearest"]]["test"] for t in tasks]),
    }
    for name, rule in RULES.items():
        cols[f"selection by {name}"] = np.array(
            [expected(t, rule, k, draws, seed, served(t)) for t in tasks]
        )
    extra = {len(t.get("extra", [])) for t in tasks}
    if len(extra) == 1 and extra != {0}:
        alone = sum(n.startswith("expert:") for n in wider(tasks[0]))
        cols[f"selection by {SERVED}, the {alone} nearest experts alone"] = np.array(
            [expected(t, RULES[SERVED], k, draws, seed, wider(t)) for t in tasks]
        )
    cols["best candidate on the test split"] = np.array(
        [max(t["candidates"][n]["test"] for n in served(t)) for t in tasks]
    )
    cols["oracle"] = np.array([t["oracle"] for t in tasks])
    bare, oracle = cols["bare"], cols["oracle"]
    gain = oracle - bare
    ok = np.abs(gain) >= 0.05  # a share of a gain near zero says nothing
    baseline = cols[f"selection by {SERVED}"]
    kind = "held-out" if data["held_out"] else "training"
    lines = [
        f"{len(tasks)} {kind} tasks, {draws} draws of k = {k} from a pool of "
        f"{data['pool']} training examples each"
        + (", each task's own expert left out" if not data["held_out"] else "") + "\n",
        f"| method | accuracy | / oracle | share of the oracle's gain | difference to "
        f"selection by {SERVED} (95 % CI) |",
        "|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for m, acc in cols.items():
        share = float(np.mean((acc[ok] - bare[ok]) / gain[ok])) if ok.any() else float("nan")
        lo, hi = bootstrap(acc - baseline, seed)
        lines.append(
            f"| {m} | {acc.mean():.3f} | {np.mean(acc / oracle):.1%} | {share:.1%} | "
            f"{(acc - baseline).mean():+.3f} [{lo:+.3f}, {hi:+.3f}] |"
        )
    lines += ["\nPer task:\n", "| task | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for i, t in enumerate(tasks):
        lines.append(f"| {t['name']} | " + " | ".join(f"{c[i]:.3f}" for c in cols.values()) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--count", type=int, default=20, help="training tasks to sample")
    ap.add_argument("--tasks", help="comma-separated tasks instead of a sample")
    ap.add_argument("--pool", type=int, default=96, help="training examples scored a task")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--experts", type=int, default=3, help="nearest experts alone to score")
    ap.add_argument("--held-out", action="store_true", help="score the held-out tasks")
    ap.add_argument("--report", action="store_true", help="print the kept results and stop")
    args = ap.parse_args()
    if args.count < 1 or args.draws < 1 or not 2 <= args.k < args.pool:
        raise SystemExit("--count and --draws must be >= 1, and 2 <= --k < --pool")
    if not 3 <= args.experts <= 20:
        raise SystemExit("--experts must be in [3, 20]: the service offers 3")

    from registry.settings import get_settings

    suffix = "-held-out" if args.held_out else ""
    path = get_settings().results_dir / f"selection-rules-{args.base_model}{suffix}.json"
    if args.report:
        if not path.exists():
            raise SystemExit(f"{path} does not exist: run without --report first")
        data = json.loads(path.read_text())
        if args.k >= int(data["pool"]):
            raise SystemExit(f"--k must be below the pool of {data['pool']} the file was scored on")
        sys.stdout.write(report(data, args.k, args.draws))
        return

    from generator.adapt.examples import FewShot
    from generator.adapt.scoring import score_all
    from generator.quality.heldout import oracle_weights
    from generator.serve.fewshot import EXPERTS, candidates_for
    from generator.serve.generator import Request
    from registry.blobs import write_atomic

    reg, suite, evaluator, sg, own = open_serving(args.base_model)
    experts = set(sg.ckpt.expert_ids)
    pool = [
        t for t in suite
        if t.held_out == args.held_out and t.is_classification and t.name in own
        and (args.held_out or own[t.name] in experts) and len(t.train) > args.pool
    ]  # fmt: skip
    if args.tasks:
        kind = "held-out" if args.held_out else "training"
        chosen = named(pool, args.tasks, f"{kind} tasks with a registered adapter")
    elif args.held_out:
        chosen = pool
    else:
        chosen = stratified(pool, args.count, args.seed)
    binding = {"generator": sg.id, "pool": args.pool, "seed": args.seed}
    data = bound(path, binding, "tasks")
    data.update(binding=binding, pool=args.pool, seed=args.seed, held_out=args.held_out)

    def pooled(task: Any) -> FewShot:
        rng = random.Random(f"{task.name}|pool|{args.seed}")
        return FewShot(tuple(rng.sample(task.train, args.pool)), task.labels)

    def scored(adapters: dict[str, Any], task: Any) -> dict[str, dict[str, Any]]:
        shots = pooled(task)
        on_pool = score_all(evaluator, task.description, shots, adapters)
        on_test = score_all(evaluator, task.description, FewShot(tuple(task.test), task.labels),
                            adapters)  # fmt: skip
        return {
            n: {
                "test": round(float(on_test[n].accuracy() or 0.0), 4),
                "pool_right": [int(x) for x in on_pool[n].right.tolist()],  # type: ignore[union-attr]
                "pool_logp": [round(float(x), 5) for x in on_pool[n].margin.tolist()],
            }
            for n in adapters
        }

    for task in chosen:
        kept = data["tasks"].get(task.name)
        wide = kept is not None and len(kept.get("extra", [])) >= args.experts - EXPERTS
        if wide and "pool_gold" in kept:
            continue
        t0 = time.perf_counter()
        with sg.without([own[task.name]] if own[task.name] in experts else []):
            made = sg.generate([Request(task.description, seed=args.seed)])[0]
            found = candidates_for(sg, made)
            query = np.asarray(made.embedding, dtype=np.float32)
            near, _ = sg.neighbours(query / np.linalg.norm(query), args.experts)
        layout, config = sg.ckpt.layout, made.config
        extra = {
            f"expert:{e.record.name}": (config, layout.unflatten(e.weights)) for e in near[EXPERTS:]
        }
        if kept is None:
            kept = {
                "name": task.name,
                "family": task.family,
                "nearest": found.nearest,
                "oracle": round(float(evaluator.accuracy(
                    task, oracle_weights(reg, args.base_model, task)).accuracy), 4),
                "candidates": scored({**found.adapters, "none": None}, task),
            }  # fmt: skip
        kept["pool_gold"] = [task.labels.index(e.output) for e in pooled(task).examples]
        unscored = {n: a for n, a in extra.items() if n not in kept["candidates"]}
        if unscored:
            kept["candidates"] |= scored(unscored, task)
        kept["extra"] = list(extra)
        data["tasks"][task.name] = kept
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(data).encode())
        print(f"{task.name}: scored {len(kept['candidates'])} candidates "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    sys.stdout.write(report(data, args.k, args.draws))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
