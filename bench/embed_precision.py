"""The description embedder in bfloat16 against float32: speed, and what retrieval sees.

    .venv/bin/python bench/embed_precision.py [--suite PATH] [--rounds 5]

Loads MiniLM twice, as ``LORAMINT_EMBED_PRECISION=float32`` and as the default
(``auto``: bfloat16 autocast where the CPU multiplies bfloat16 natively), and in
one run, alternating the two ``--rounds`` times so that a busy machine slows both
alike:

- speed: one short description at a time (p50 over 40 descriptions per round), and
  batches of 32 (descriptions per second);
- fidelity, on suite v2's *training* tasks (built under ``$LORAMINT_HOME/tasks/v2``
  when missing; held-out tasks are not read): each task keyed as the expert bank keys
  it (the normalised mean of its training wordings' float32 vectors), queried with
  its evaluation wording, itself left out. Reported: cosine of each query's
  vectors, the largest change of any query-key similarity, how often the top-1/3/5
  neighbours stay the same, and how much SG-LoRA's mixture weights over the top K
  move (L1 distance) at each temperature its training chooses from.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SINGLE = 40  # descriptions timed one at a time per round
BATCH = 32


def mixture(sims: np.ndarray, k: int, tau: float) -> np.ndarray:
    """SG-LoRA's mixture per row as a dense (rows, experts) matrix: its softmax weights
    (``softmax_weights``) over the row's top k, zero elsewhere."""
    import torch

    from generator.hypernet.mixture import softmax_weights

    top = np.argsort(-sims, axis=1)[:, :k]
    dense = np.zeros_like(sims)
    for row, idx in enumerate(top):
        dense[row, idx] = softmax_weights(torch.as_tensor(sims[row, idx]), tau).numpy()
    return dense


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", type=Path, help="task suite folder (default: v2, built if missing)")
    ap.add_argument("--rounds", type=int, default=5, help="alternations of the two (default 5)")
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")

    from bench.generate import description
    from bench.zoo_recipe import v2_suite
    from generator.fit.sg import TAU_GRID
    from registry.embeddings import MiniLMEmbedder, native_bf16
    from registry.settings import get_settings

    root = args.suite or get_settings().tasks_dir / "v2"
    suite = v2_suite(args.suite, root)
    tasks = [t for t in suite if not t.held_out and t.meta.get("eval_description")]
    if len(tasks) < 6:
        raise SystemExit(f"{root} has {len(tasks)} training tasks with an evaluation wording")

    float32 = MiniLMEmbedder(precision="float32")
    auto = MiniLMEmbedder()
    print(f"CPU with native bfloat16 products: {'yes' if native_bf16() else 'no'}")
    if not auto.bfloat16:
        print("The default (auto) runs in float32 on this machine: nothing to compare.")
        return
    embedders = {"float32": float32, "bfloat16 (auto)": auto}

    texts = [description(i) for i in range(SINGLE * args.rounds + BATCH * 4)]
    for e in embedders.values():
        e.encode(texts[:BATCH])  # warm
    single: dict[str, list[float]] = {n: [] for n in embedders}
    batched: dict[str, list[float]] = {n: [] for n in embedders}
    for r in range(args.rounds):
        for name, e in embedders.items():
            for t in texts[r * SINGLE : (r + 1) * SINGLE]:
                t0 = time.perf_counter()
                e.encode([t])
                single[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for b in range(4):
                e.encode(texts[b * BATCH : (b + 1) * BATCH])
            batched[name].append(4 * BATCH / (time.perf_counter() - t0))
    print(f"\nSpeed ({args.rounds} alternating rounds):\n")
    print("| precision | one description p50 ms | batch of 32: descriptions/s (median) |")
    print("|---|---:|---:|")
    for name in embedders:
        p50 = statistics.median(single[name]) * 1000
        print(f"| {name} | {p50:.2f} | {statistics.median(batched[name]):.0f} |")

    wordings = [list(t.meta.get("paraphrases") or [t.description]) for t in tasks]
    keys = np.stack([float32.encode(w).mean(0) for w in wordings])
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    queries = [str(t.meta["eval_description"]) for t in tasks]
    q32, q16 = float32.encode(queries), auto.encode(queries)
    s32, s16 = q32 @ keys.T, q16 @ keys.T
    np.fill_diagonal(s32, -np.inf)  # a task is not its own neighbour
    np.fill_diagonal(s16, -np.inf)
    finite = np.isfinite(s32)
    cos = (q32 * q16).sum(1)
    print(f"\nFidelity on {len(tasks)} training tasks of {root} (keys in float32):\n")
    print(f"- cosine of a query's two vectors: min {cos.min():.6f}, mean {cos.mean():.6f}")
    diff = np.abs(s32[finite] - s16[finite])
    print(f"- query-key similarity change: max {diff.max():.5f}, mean {diff.mean():.5f}")
    for k in (1, 3, 5):
        ref, ours = np.argsort(-s32, 1)[:, :k], np.argsort(-s16, 1)[:, :k]
        same = np.mean([set(x) == set(y) for x, y in zip(ref, ours, strict=True)])
        print(f"- top-{k} neighbours unchanged: {same:.3f}")
    print("\n| tau | K | mixture L1 shift mean | max |")
    print("|---:|---:|---:|---:|")
    for tau in TAU_GRID:
        for k in (3, 5):
            shift = np.abs(mixture(s32, k, tau) - mixture(s16, k, tau)).sum(1)
            print(f"| {tau} | {k} | {shift.mean():.4f} | {shift.max():.4f} |")


if __name__ == "__main__":
    main()
