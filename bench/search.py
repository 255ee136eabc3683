"""Semantic-search benchmark: exact vs approximate FAISS indexes, and registry ingest.

Run by hand (not in the test suite):

    .venv/bin/python bench/search.py                 # 10k, 100k, 1M vectors
    .venv/bin/python bench/search.py --sizes 10000   # quick

For each size it prints, per index kind, build time, p50/p99 single-query
latency and recall@10 against exact search (the baseline in the same run).
Vectors are 384-d, L2-normalised, drawn around random cluster centres (like
description embeddings, tasks come in families); embedding a million real
descriptions would take ~30 min here, so the search figures use these and the
ingest figure uses real descriptions through the real registry.

Ingest: adapters per second through ``Registry.add_adapter`` (validation,
MiniLM embedding, blob write, SQLite commit), for tiny LoRA adapters so that
the figure is the registry's overhead, not file I/O of big weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry import vector_index  # noqa: E402

DIM = 384
K = 10


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    # (n, D): a random centre each, plus noise comparable to within-family spread
    idx = rng.integers(0, centres.shape[0], size=n)
    x = centres[idx] + rng.standard_normal((n, DIM), dtype=np.float32) * 0.06
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x, dtype=np.float32)


def timed_queries(index: faiss.Index, queries: np.ndarray) -> tuple[np.ndarray, float, float]:
    lat = []
    ids = np.zeros((queries.shape[0], K), np.int64)
    for i in range(queries.shape[0]):
        t = time.perf_counter()
        _, ids[i] = index.search(queries[i : i + 1], K)
        lat.append(time.perf_counter() - t)
    arr = np.array(lat) * 1000
    return ids, float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def bench_size(n: int, n_queries: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    centres = rng.standard_normal((max(n // 40, 50), DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    data = clustered(n, rng, centres)
    queries = clustered(n_queries, rng, centres)
    ids = np.arange(n, dtype=np.int64)
    rows = []
    truth = None
    for kind in ("flat", "hnsw", "ivf"):
        t = time.perf_counter()
        if kind == "ivf":
            nlist = int(4 * np.sqrt(n))
            quant = faiss.IndexFlatIP(DIM)
            inner = faiss.IndexIVFFlat(quant, DIM, nlist, faiss.METRIC_INNER_PRODUCT)
            inner.train(data[rng.choice(n, min(n, 40 * nlist), replace=False)])
            inner.nprobe = 16
            index = faiss.IndexIDMap2(inner)
            index.add_with_ids(data, ids)
        else:
            # the registry's own index builder; exact_max picks the kind
            index = vector_index.VectorIndex.build(
                ids, data, exact_max=n if kind == "flat" else 0
            ).index
        build_s = time.perf_counter() - t
        found, p50, p99 = timed_queries(index, queries)
        if kind == "flat":
            truth = found
        rows.append(
            {
                "n": n,
                "index": kind,
                "build_s": round(build_s, 2),
                "vectors_per_s": round(n / build_s),
                "p50_ms": round(p50, 3),
                "p99_ms": round(p99, 3),
                "recall@10": round(recall(found, truth), 4),  # type: ignore[arg-type]
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del index
    return rows


def bench_ingest(n: int) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from registry.service import Registry
    from registry.settings import Settings

    words = [
        "sentiment",
        "topic",
        "toxicity",
        "intent",
        "language",
        "spam",
        "emotion",
        "sarcasm",
        "question type",
        "formality",
        "urgency",
        "stance",
    ]
    domains = [
        "product reviews",
        "tweets",
        "news articles",
        "emails",
        "support tickets",
        "movie subtitles",
        "forum posts",
        "recipes",
        "legal clauses",
        "medical notes",
    ]
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        LlamaForCausalLM(cfg).save_pretrained(tmp / "base")
        get_peft_model(
            LlamaForCausalLM(cfg),
            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        ).save_pretrained(str(tmp / "adapter"))
        reg = Registry(
            Settings(
                home=tmp / "home",
                database_url=f"sqlite:///{tmp}/home/r.db",
                model_cache=tmp / "models",
            )
        )
        reg.add_adapter(tmp / "adapter", base_model=str(tmp / "base"), description="warm-up")
        t = time.perf_counter()
        for i in range(n):
            task, domain = words[i % len(words)], domains[(i // len(words)) % len(domains)]
            desc = f"Detect the {task} of {domain} (variant {i})"
            reg.add_adapter(tmp / "adapter", base_model=str(tmp / "base"), description=desc)
        elapsed = time.perf_counter() - t
        t = time.perf_counter()
        reg.search("what is the mood of a customer email", k=10)
        first_search = time.perf_counter() - t
        row = {
            "adapters": n,
            "seconds": round(elapsed, 2),
            "adapters_per_s": round(n / elapsed, 1),
            "first_search_after_ingest_ms": round(first_search * 1000, 1),
        }
        print(json.dumps(row), flush=True)
        reg.close()
        return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[10_000, 100_000, 1_000_000],
        help="index sizes to measure (none: only the ingest figure)",
    )
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument(
        "--ingest", type=int, default=200, help="adapters for the ingest figure (0 = skip)"
    )
    ap.add_argument("--out", type=Path, default=None, help="write all rows as JSON here")
    args = ap.parse_args()
    if any(s <= 0 for s in args.sizes) or args.queries <= 0 or args.ingest < 0:
        ap.error("sizes and --queries must be positive, --ingest >= 0")
    rng = np.random.default_rng(0)
    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; "
        f"HNSW M={vector_index.HNSW_M} efC={vector_index.HNSW_EF_CONSTRUCTION} "
        f"efSearch={vector_index.HNSW_EF_SEARCH}; IVF nlist=4*sqrt(n) nprobe=16",
        flush=True,
    )
    rows = [r for n in args.sizes for r in bench_size(n, args.queries, rng)]
    ingest = bench_ingest(args.ingest) if args.ingest else None

    print("\n| vectors | index | build s | p50 ms | p99 ms | recall@10 vs exact |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['index']} | {r['build_s']} | {r['p50_ms']} "
            f"| {r['p99_ms']} | {r['recall@10']} |"
        )
    if ingest:
        print(
            f"\ningest through the registry: {ingest['adapters_per_s']} adapters/s "
            f"({ingest['adapters']} adapters, embedding included)"
        )
    if args.out:
        args.out.write_text(json.dumps({"search": rows, "ingest": ingest}, indent=2))


if __name__ == "__main__":
    main()
