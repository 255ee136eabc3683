"""How far can any choice among SG-LoRA's mixtures go on the held-out tasks?

    .venv/bin/python bench/ceiling.py [--base-model M] [--tasks a,b] [--report]
                                      [--generator ID]

A diagnostic, not a method: it scores every candidate that SG-LoRA's
selection chooses among (the bare model; the top-K mixture means mu* of the
experts' late-trajectory prototypes for every K and tau of ``--select
task``'s grid; the nearest expert's registered weights) on each held-out
task's *test* split, and reports two ceilings:

- the best single candidate over all tasks (what a perfect global choice of
  K and tau would reach: the most any selection fitted once can give);
- the best pair: for each task the better of the nearest expert and one
  mixture, the best such mixture over all tasks (what a perfect similarity
  gate would reach: a gate serves one or the other);
- the best candidate of each task (what a perfect per-request choice would
  reach), with and without the bare model among the candidates.

The last two look at the test labels, so they are optimistic bounds: the
best of several noisy scores per task is biased upwards.

It also asks whether the base model can read the question at all: for each
two-label task, the AUROC of the bare model's label margin
log p(label 0) - log p(label 1) over the test examples (0.5: it cannot tell
the classes apart, whatever the threshold). A description can only add what
the model or the experts already know; where the bare model sits at 0.5 and no
mixture of experts gets close to the oracle, a generator that reads the
description has nothing to draw the missing accuracy from.

Prints one row per task and the summary; writes
``$LORAMINT_HOME/results/ceiling-<base>.json``; ``--report`` prints the
summary of that file again without scoring anything. ``--generator ID`` (an
SG-LoRA generator chosen by ``--select task``) also prints the Spearman rank
correlation, over the mixtures both scored, between its leave-one-out scores
on the training tasks (``k_tau_grid``) and their shares of the oracle here:
does what selection sees on the training tasks rank the mixtures the way the
held-out tasks do? Held-out tasks are only
scored here, never trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def auroc(margin: np.ndarray, positive: np.ndarray) -> float | None:
    """Probability that a random positive's margin beats a random negative's (ties: half);
    None when the examples hold one class only."""
    pos, neg = margin[positive], margin[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


NEAREST = "nearest (final weights)"


def ranks(values: list[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1)
    for x in np.unique(v):
        r[v == x] = r[v == x].mean()
    return r


def spearman(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def selection_agreement(
    summary: dict[str, Any], grid: dict[str, float]
) -> tuple[int, float] | None:
    """(mixtures compared, Spearman correlation) between a generator's leave-one-out grid
    ("k=K,tau=T" -> training-task accuracy) and the same mixtures' shares of the oracle."""
    from generator.fit.selection import Candidate

    pairs = []
    for key, loo in grid.items():
        cand = Candidate.parse(key)
        held = summary["candidates"].get(f"K={cand.k},tau={cand.tau}")
        if held is not None:
            pairs.append((loo, held["share_of_oracle"]))
    if len(pairs) < 3:
        return None
    return len(pairs), spearman([p[0] for p in pairs], [p[1] for p in pairs])


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ceilings of a list of scored tasks (``rows`` as the JSON file holds them)."""
    candidates = list(rows[0]["accuracy"])
    mixtures = [c for c in candidates if c.startswith("K=")]

    def share(pick: Callable[[dict[str, Any]], float]) -> float:
        return float(np.mean([pick(r) / r["oracle"] for r in rows if r["oracle"] > 0]))

    def best_of(*columns: str) -> Callable[[dict[str, Any]], float]:
        return lambda r: max(r["accuracy"][c] for c in columns)

    shares = {c: share(best_of(c)) for c in candidates}
    global_best = max(candidates, key=lambda c: shares[c])
    pairs = {m: share(best_of(NEAREST, m)) for m in mixtures}
    best_pair = max(mixtures, key=lambda m: pairs[m])
    aurocs = [r["bare_auroc"] for r in rows if r["bare_auroc"] is not None]
    return {
        "oracle_mean": float(np.mean([r["oracle"] for r in rows])),
        "candidates": {
            c: {
                "mean": float(np.mean([r["accuracy"][c] for r in rows])),
                "share_of_oracle": shares[c],
            }
            for c in candidates
        },
        "best_global_candidate": global_best,
        "best_global_share": shares[global_best],
        "best_pair_mixture": best_pair,
        "best_pair_share": pairs[best_pair],
        "best_per_task_share": share(lambda r: max(r["accuracy"].values())),
        "best_per_task_share_without_base": share(
            lambda r: max(v for c, v in r["accuracy"].items() if c != "base")
        ),
        "mean_bare_auroc": float(np.mean(aurocs)) if aurocs else None,
    }


def show(summary: dict[str, Any]) -> None:
    print(f"\n{'candidate':26s} {'mean':>6s} {'of oracle':>9s}")
    for c, v in summary["candidates"].items():
        print(f"{c:26s} {v['mean']:6.3f} {v['share_of_oracle']:9.1%}")
    print(f"{'oracle':26s} {summary['oracle_mean']:6.3f} {1:9.1%}")
    auroc_mean = summary["mean_bare_auroc"]
    print(
        f"\nbest single candidate: {summary['best_global_candidate']}, "
        f"{summary['best_global_share']:.1%} of the oracle\n"
        f"best pair (per task the better of the nearest expert and "
        f"{summary['best_pair_mixture']}; peeks at test labels): "
        f"{summary['best_pair_share']:.1%}\n"
        f"best candidate of each task (peeks at test labels): "
        f"{summary['best_per_task_share']:.1%}, "
        f"{summary['best_per_task_share_without_base']:.1%} without the bare model\n"
        "bare model's label-margin AUROC, mean over two-label tasks: "
        + ("-" if auroc_mean is None else f"{auroc_mean:.3f}")
    )


def score(registry: Any, base_model: str, names: list[str]) -> list[dict[str, Any]]:
    """Every candidate's test accuracy on each held-out task of the default suite."""
    import torch

    from generator.experts import ExpertBank
    from generator.fit.selection import TAU_GRID
    from generator.fit.sg import K_GRID
    from generator.fit.train import default_suite_tasks
    from generator.quality.heldout import oracle_weights
    from generator.tasks.evaluation import Evaluator

    held = [t for t in default_suite_tasks(registry) if t.held_out and t.is_classification]
    if names:
        unknown = sorted(set(names) - {t.name for t in held})
        if unknown:
            raise SystemExit(f"not held-out classification tasks of the default suite: {unknown}")
        held = [t for t in held if t.name in names]
    if not held:
        raise SystemExit("no held-out task at hand: run `loramint tasks build`")
    bank = ExpertBank.from_registry(registry, base_model)  # held-out adapters never load
    evaluator = Evaluator.from_path(registry.base_model_path(bank.base_model))
    grid = [(k, tau) for k in K_GRID for tau in (TAU_GRID if k > 1 else TAU_GRID[:1])]
    rows = []
    for task in held:
        q = torch.as_tensor(registry.embedder.encode([task.description])[0])
        idx, sims = bank.nearest(q, max(K_GRID))
        oracle = evaluator.accuracy(task, oracle_weights(registry, bank.base_model, task)).accuracy
        bare = evaluator.label_scores(task)  # (N, L)
        gold = torch.tensor([task.labels.index(e.output) for e in task.test])  # (N,)
        acc = {"base": (bare.argmax(-1) == gold).float().mean().item()}
        margin_auroc = None
        if len(task.labels) == 2:
            margin_auroc = auroc((bare[:, 0] - bare[:, 1]).numpy(), (gold == 0).numpy())
        nearest = bank.layout.unflatten(bank.experts[idx[0]].weights)
        acc[NEAREST] = evaluator.accuracy(task, (bank.template, nearest)).accuracy
        for k, tau in grid:
            mixture = bank.mixture(idx[:k], sims[:k], tau)
            weights = bank.layout.unflatten(mixture.mean)
            acc[f"K={k},tau={tau}"] = evaluator.accuracy(task, (bank.template, weights)).accuracy
        best = max(acc, key=lambda c: acc[c])
        rows.append(
            {
                "task": task.name,
                "oracle": oracle,
                "bare_auroc": margin_auroc,
                "nearest_sim": float(sims[0]),
                "accuracy": acc,
                "best": best,
            }
        )
        shown = "-" if margin_auroc is None else f"{margin_auroc:5.3f}"
        print(
            f"{task.name:26s} bare AUROC {shown}  nearest sim {float(sims[0]):.2f}  "
            f"oracle {oracle:.3f}  best {acc[best]:.3f} ({best})",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", default="", help="comma-separated held-out tasks (default: all)")
    ap.add_argument(
        "--report", action="store_true", help="summarise the last results file; score nothing"
    )
    ap.add_argument(
        "--generator", type=int, help="an SG-LoRA generator whose selection grid to compare"
    )
    args = ap.parse_args()

    from registry.blobs import write_atomic
    from registry.errors import NotFound
    from registry.service import Registry

    reg = Registry()
    grid = None  # checked before anything is scored
    if args.generator is not None:
        try:
            record = reg.get_generator(args.generator)
        except NotFound as e:
            raise SystemExit(str(e)) from None
        if record.metrics.get("k_tau_by") != "task":
            raise SystemExit(f"generator {args.generator} did not choose K and tau by task")
        grid = record.metrics.get("k_tau_grid") or {}
    out = reg.settings.results_dir / f"ceiling-{args.base_model.replace('/', '_')}.json"
    if args.report:
        if not out.exists():
            raise SystemExit(f"no results at {out}: run bench/ceiling.py without --report first")
        rows = json.loads(out.read_text())["tasks"]
    else:
        names = [n.strip() for n in args.tasks.split(",") if n.strip()]
        rows = score(reg, args.base_model, names)
    summary = summarise(rows)
    show(summary)
    if grid is not None:
        found = selection_agreement(summary, grid)
        if found is None:
            raise SystemExit(f"generator {args.generator} scored too few of these mixtures")
        n, rho = found
        print(
            f"generator {args.generator}: Spearman correlation over {n} mixtures between its "
            f"leave-one-out scores on the training tasks and their shares here: {rho:+.2f}"
        )
    if not args.report:
        write_atomic(out, json.dumps({"tasks": rows, "summary": summary}, indent=2).encode())
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
