"""Generation latency and throughput, with the oracle's training time beside it.

    .venv/bin/python bench/generate.py [--base-model M] [--method sg-lora|icm-lora]
                                       [--requests 50] [--batches 1,8,32]

On the registry in $LORAMINT_HOME, with its latest generator for the base
model: one warm request at a time, timed through each stage a request goes
through (description embedding, expert search + mixture, decode, serialisation
to a PEFT zip), with two baselines on the same request: the embedding by
transformers' ``BertModel`` and the previous decoder version (each must agree),
then batches of requests decoded together (one embedding call,
one forward pass), reported as adapters per second. Then, on a scratch copy of
the registry (nothing reaches the real one): the whole generation path one
request at a time (embedding + search + decode + recipe registration), first
while the weight cache fills (a new process: each adapter it keeps takes fresh
memory) and again once it is full (a server that has run a while), then with
the weights hashed on a helper thread (as served) and by the registering thread
(the baseline), alternating request by request, and a
download's build + zip for adapters kept as recipes (cache empty, and cached)
beside the same adapters' once their weights are stored.
The same table prints the zoo's mean training time per adapter (the oracle a
generated adapter stands in for), so the speed-up factor is visible.

With ``--fewshot K`` (e.g. 16) it also times few-shot generation: for
``--fewshot-requests`` draws of K examples from the held-out tasks' training
splits (default suite), each method's time to its adapter, one after the
other on the same examples: selection as served (with its estimate), fitted
mixture weights and refinement (one run each, no estimate), beside the LoraHub
baseline and a LoRA trained from scratch with refinement's steps; then the
scoring of selection's candidates alone, all together (as served) and one
adapter at a time (the baseline), which must agree.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def percentile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency_table(header: str, rows: dict[str, list[float]], quantiles: tuple[float, ...]) -> None:
    """A markdown table of seconds as milliseconds: the quantiles, then the mean."""
    print(header)
    print("|---|" + "---:|" * (len(quantiles) + 1))
    for name, xs in rows.items():
        ms = [x * 1000 for x in xs]
        cells = [f"{percentile(ms, q):.1f}" for q in quantiles] + [f"{statistics.fmean(ms):.1f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


DESCRIPTIONS = [
    "Is this dictionary definition about a kind of {}? Answer yes or no.",
    "Does this news article report on {}? Answer yes or no.",
    "Decide whether the text talks about {}. Answer yes or no.",
    "Is the following quote about {}? Answer yes or no.",
]
FILL_LIMIT = 2000  # requests spent filling the weight cache, at most
TOPICS = ["fish", "tools", "weather", "music", "birds", "sports", "cooking", "vehicles", "money"]


def description(i: int) -> str:
    """The i-th of the bench's distinct descriptions (distinct so no cache can help)."""
    template = DESCRIPTIONS[i % len(DESCRIPTIONS)]
    topic = TOPICS[(i // len(DESCRIPTIONS)) % len(TOPICS)]
    return template.format(topic) + f" (request {i})"


def descriptions(n: int) -> list[str]:
    return [description(i) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="smollm2-135m-instruct")
    parser.add_argument("--method", default="sg-lora", choices=["sg-lora", "icm-lora"])
    parser.add_argument("--requests", type=int, default=50, help="timed single requests")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes for throughput")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--downloads", type=int, default=20, help="downloads timed per kind")
    parser.add_argument("--fewshot", type=int, default=0, help="examples per few-shot request")
    parser.add_argument("--fewshot-requests", type=int, default=5, help="few-shot requests timed")
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        parser.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if not batches or min(batches) < 1:
        parser.error("--batches must be positive integers")
    # torch loads through these, after ``registry`` set the service's OpenMP spin
    from generator.serve.decode import VERSIONS
    from generator.serve.generate import generator_for
    from generator.serve.generator import Generator, Request
    from generator.zoo.build import zoo_records
    from registry.errors import LoramintError
    from registry.lora_spec import weights_bytes
    from registry.peft_format import zip_bytes
    from registry.service import open_registry

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        registry = open_registry()
        base = args.base_model
        record = generator_for(registry, base, args.method)
    except LoramintError as exc:
        sys.exit(f"error: {exc}")
    t0 = time.perf_counter()
    gen = Generator.from_registry(registry, record)
    gen.generate([Request("warm-up: is this about anything? Answer yes or no.")])
    load_s = time.perf_counter() - t0
    print(f"generator {record.id} ({args.method}, {base}) loaded and warm in {load_s:.1f} s")

    # One request at a time, stage by stage: embedding, then generate() minus the
    # embedding (search + mixture + decode + de-normalise + unflatten), then the zip.
    stages: dict[str, list[float]] = {n: [] for n in ("embed", "search+decode", "serialise")}
    stages["total"] = []
    previous: list[float] = []  # the previous decoder's arithmetic on the same request
    previous_version = VERSIONS[-2]
    worst = 0.0
    # the description embedding by transformers' BertModel itself, on the same request
    library_encode = getattr(registry.embedder, "library_encode", None)
    library: list[float] = []
    embeddings_agree = True
    for text in descriptions(args.requests):
        t0 = time.perf_counter()
        vec = gen.embed([text])
        t1 = time.perf_counter()
        out = gen.generate([Request(text)], vectors=vec)[0]
        t2 = time.perf_counter()
        zip_bytes(out.config, weights_bytes(out.weights))
        t3 = time.perf_counter()
        stages["embed"].append(t1 - t0)
        stages["search+decode"].append(t2 - t1)
        stages["serialise"].append(t3 - t2)
        stages["total"].append(t3 - t0)
        if library_encode is not None:
            t4 = time.perf_counter()
            embeddings_agree &= bool(np.array_equal(library_encode([text]), vec))
            library.append(time.perf_counter() - t4)
        if gen.decoder is not None:
            t4 = time.perf_counter()
            old = gen.generate([Request(text)], vectors=vec, decoder=previous_version)[0].weights
            previous.append(time.perf_counter() - t4)
            worst = max(worst, max(float((old[k] - out.weights[k]).abs().max()) for k in old))
    if library:
        stages["embed, transformers' BertModel (baseline)"] = library
    if previous:
        stages[f"search+decode, decoder version {previous_version} (baseline)"] = previous

    print(f"\nOne warm request at a time ({args.requests} requests), milliseconds:")
    latency_table("| stage | p50 | p90 | p99 | mean |", stages, (0.5, 0.9, 0.99))
    if library:
        agree = "yes" if embeddings_agree else "no"
        print(f"embeddings equal to BertModel's, bit for bit: {agree}")
        if not embeddings_agree:
            sys.exit("error: the written-out embedder and BertModel disagree")
    if previous:
        print(f"largest difference from decoder version {previous_version}'s weights: {worst:.2e}")
        if worst > 1e-4:
            sys.exit("error: the decoders disagree")

    print("\nBatched (one embedding call and one decode per batch, plus each zip):")
    print("| batch | seconds per batch | adapters/s | vs batch 1 |")
    print("|---:|---:|---:|---:|")
    rate1 = None
    for size in batches:
        texts = descriptions(size * 3)
        times = []
        for rep in range(3):
            chunk = texts[rep * size : (rep + 1) * size]
            t0 = time.perf_counter()
            for out in gen.generate([Request(t) for t in chunk]):
                zip_bytes(out.config, weights_bytes(out.weights))
            times.append(time.perf_counter() - t0)
        per_batch = statistics.median(times)
        rate = size / per_batch
        rate1 = rate1 or (rate if size == 1 else None)
        ratio = f"{rate / rate1:.2f}x" if rate1 else "-"
        print(f"| {size} | {per_batch:.3f} | {rate:.1f} | {ratio} |")

    zoo = [r for r in zoo_records(registry, base) if r.metrics.get("train_seconds")]
    p50 = percentile(stages["total"], 0.5)
    if zoo:
        train = [float(r.metrics["train_seconds"]) for r in zoo]
        mean_train = statistics.fmean(train)
        print(
            f"\nOracle: the zoo's {len(zoo)} adapters took {mean_train:.0f} s each to train "
            f"on average (median {statistics.median(train):.0f} s; training only, no evaluation)."
        )
        print(
            f"Generation p50 {p50 * 1000:.1f} ms: {mean_train / p50:,.0f}x faster than training "
            "the oracle."
        )
    else:
        print("\nNo zoo adapters with a recorded training time: oracle comparison skipped.")
    time_registered(registry.settings.home, base, args.method, args.requests, args.downloads)
    if args.fewshot:
        time_fewshot(registry, gen, base, args.fewshot, args.fewshot_requests)


def time_registered(home: Path, base: str, method: str, requests: int, downloads: int) -> None:
    """The generation path with registration, and downloads, on a scratch registry."""
    import os
    import tempfile

    import sqlalchemy as sa

    from bench.load import scratch_home
    from generator.serve.generate import LoadedGenerators, generate_adapters
    from generator.serve.generator import Request
    from registry.blobs import sha256_hex
    from registry.recipes import WeightCache
    from registry.service import Registry
    from registry.settings import Settings

    with tempfile.TemporaryDirectory(prefix="loramint-generate-") as tmp:
        scratch = Path(tmp) / "home"
        scratch_home(home, scratch)
        env = dict(os.environ) | {"LORAMINT_HOME": str(scratch)}
        env.pop("LORAMINT_DATABASE_URL", None)
        env.setdefault("LORAMINT_MODEL_CACHE", str(Settings.from_env().model_cache))
        reg = Registry(Settings.from_env(env))
        loaded = LoadedGenerators(reg)

        def one(text: str) -> int:
            [(rec, _)] = generate_adapters(
                reg, [Request(text)], base_model=base, method=method, loaded=loaded
            )
            return rec.id

        one("warm-up: is this about anything at all? Answer yes or no.")
        # A new process's cache takes fresh memory for every adapter it keeps, whose
        # first touch costs page faults; once full it reuses what it evicts.
        filling, full = [], []
        ids = []
        texts = (description(i) + " (registered)" for i in itertools.count())
        for text in itertools.islice(texts, requests):
            t0 = time.perf_counter()
            ids.append(one(text))
            filling.append(time.perf_counter() - t0)
        size = reg.cache.size // max(1, len(ids))
        for text in itertools.islice(texts, FILL_LIMIT):
            if reg.cache.size + size > reg.cache.capacity:
                break
            one(text)
        statements = 0

        def count(*_: object) -> None:
            nonlocal statements
            statements += 1

        sa.event.listen(reg.engine, "before_cursor_execute", count)
        for text in itertools.islice(texts, requests):
            t0 = time.perf_counter()
            one(text)
            full.append(time.perf_counter() - t0)
        sa.event.remove(reg.engine, "before_cursor_execute", count)
        # the baseline, alternating request by request: the weights hashed on the
        # registering thread instead of a helper
        helpers = reg.hashing
        inline: list[float] = []
        threaded: list[float] = []
        for i, text in enumerate(itertools.islice(texts, 2 * requests)):
            reg.hashing = None if i % 2 else helpers
            t0 = time.perf_counter()
            one(text)
            (inline if i % 2 else threaded).append(time.perf_counter() - t0)
        reg.hashing = helpers
        state = "full" if reg.cache.size + size > reg.cache.capacity else "not full"
        rows = {
            "generate + register (recipe), cache filling": filling,
            f"generate + register (recipe), cache {state}": full,
            f"the same, alternating: weights hashed on a helper (as served), cache {state}": (
                threaded
            ),
            f"the same, alternating: weights hashed by the caller (baseline), cache {state}": (
                inline
            ),
        }
        ids = ids[:downloads]
        reg.adapter_zip(ids[0])  # loads the rebuild's generator once
        cold, cached, stored = [], [], []
        for adapter_id in ids:
            reg.cache = WeightCache(reg.cache.capacity)
            t0 = time.perf_counter()
            reg.adapter_zip(adapter_id)
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reg.adapter_zip(adapter_id)
            cached.append(time.perf_counter() - t0)
        for adapter_id in ids:
            reg.materialise_adapter(adapter_id)
        for adapter_id in ids:
            t0 = time.perf_counter()
            reg.adapter_zip(adapter_id)
            stored.append(time.perf_counter() - t0)
        weights = reg.adapter_files(ids[0]).weights
        hashing = []
        for _ in range(50):  # the part of registering no SQL or code change can remove
            t0 = time.perf_counter()
            sha256_hex(weights)
            hashing.append(time.perf_counter() - t0)
        rows["download, recipe (build + zip)"] = cold
        rows["download, recipe (cached) + zip"] = cached
        rows["download, stored weights + zip"] = stored
        reg.close()
    print(f"\nRegistered generation and downloads ({requests} requests, {len(ids)} downloads):")
    latency_table("| path | p50 ms | p90 ms | mean ms |", rows, (0.5, 0.9))
    print(f"SQL statements per registered request: {statements / requests:.1f}")
    print(
        f"sha256 of one adapter's weights ({len(weights):,} bytes): "
        f"p50 {percentile(hashing, 0.5) * 1e3:.2f} ms"
    )


TOGETHER = "selection's scoring: candidates together"
ALONE = "selection's scoring: one adapter at a time"


def time_fewshot(registry: object, gen: object, base: str, k: int, requests: int) -> None:
    """Each few-shot method's seconds to its adapter, p50 over ``requests`` draws."""
    from generator.adapt.pipeline import NONE
    from generator.adapt.scoring import score, score_all
    from generator.quality.fewshot import FewShotSettings, draw, method_makers
    from generator.serve.fewshot import candidates_for
    from generator.serve.generator import Generator, Request
    from generator.tasks.task import TaskSuite
    from registry.service import Registry

    assert isinstance(registry, Registry) and isinstance(gen, Generator)
    suite = TaskSuite(registry.settings.tasks_dir / "default")
    tasks = [t for t in suite if t.held_out and t.is_classification and len(t.train) >= k]
    if not tasks:
        print("\nNo held-out tasks with enough examples: few-shot timing skipped.")
        return
    settings = FewShotSettings(
        ks=(k,), methods=("selection", "weighting", "refine", "lorahub", "scratch")
    )
    evaluator = gen.evaluator()
    times: dict[str, list[float]] = {m: [] for m in (*settings.methods, TOGETHER, ALONE)}
    for i in range(requests):
        task = tasks[i % len(tasks)]
        shots = draw(task, k, i // len(tasks))
        zero_shot = gen.generate([Request(task.description)])[0]
        query = registry.embedder.encode([task.description])[0]
        experts, _ = gen.neighbours(
            query / float((query**2).sum()) ** 0.5, settings.lorahub_experts
        )
        hub = [gen.ckpt.layout.unflatten(e.weights) for e in experts]
        makers = method_makers(
            evaluator, gen, None, task, shots, zero_shot, dict(zero_shot.config), hub, settings
        )
        for method in settings.methods:
            t0 = time.perf_counter()
            makers[method]()
            times[method].append(time.perf_counter() - t0)
        # the baseline of selection's scoring: the same candidates, one adapter at a time
        found = {**candidates_for(gen, zero_shot).adapters, NONE: None}
        t0 = time.perf_counter()
        alone = {n: score(evaluator, task.description, shots, a) for n, a in found.items()}
        times[ALONE].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        together = score_all(evaluator, task.description, shots, found)
        times[TOGETHER].append(time.perf_counter() - t0)
        worst = max(float((alone[n].margin - together[n].margin).abs().max()) for n in found)
        if worst > 1e-3:
            raise SystemExit(f"candidates scored together differ from alone by {worst:.2e}")
        print(
            f"  request {i + 1}/{requests} ({task.name}): "
            + ", ".join(f"{m} {times[m][-1]:.1f} s" for m in times)
        )
    print(f"\nFew-shot generation with {k} examples ({requests} requests), seconds to the adapter:")
    print("| method | p50 | min | max |")
    print("|---|---:|---:|---:|")
    for method, xs in times.items():
        print(f"| {method} | {statistics.median(xs):.1f} | {min(xs):.1f} | {max(xs):.1f} |")


if __name__ == "__main__":
    main()
