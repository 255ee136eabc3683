"""Trans-LoRA: zoo adapters moved from one base model to another, with ablations.

    .venv/bin/python bench/transfer.py [--tasks 5] [--names a,b] [--samples 64]
        [--steps 60] [--disc-steps 30] [--max-rounds 20] [--eval-n 100] [--min-gain 0.1]
        [--source smollm2-135m-instruct] [--target gemma3-270m] [--fresh] [--balanced]
        [--soft] [--hard] [--bounds] [--set KEY=VALUE ...]

For each held-out task of the default suite (``$LORAMINT_HOME/tasks/default``)
whose zoo adapter ``zoo-<task>`` is registered on the source model and beat
the bare source model by ``--min-gain`` (default 0.1) in the zoo's own
evaluation (an adapter that does nothing has nothing to transfer), one run
on this machine scores, by rank-classification accuracy on the task's test
split (its first ``--eval-n`` examples):

- source:       the zoo adapter on the source model (what the transfer must match);
- target bare:  the target model without an adapter (the baseline to beat);
- transferred:  the full method, run as a real transfer job (the code a worker
                runs: synthesize, discriminator, filter, distill, register) and
                registered on the target;
- no filter:    the same distillation on the job's raw synthetic inputs (its
                synthesize stage, unfiltered), plus the seeds;
- seeds only:   the same distillation on the seed inputs alone;
- with ``--balanced``, two more: the kept and the raw inputs distilled with
  ``balance_labels`` (each input weighted so that every label the teacher
  gives the inputs counts alike, whatever the synthetic inputs' skew);
- with ``--soft``, one more: ``soft_filter``, every input the filter scored
  (kept and rejected), batches drawing each by the discriminator's p(real)
  (for a job run with ``soft_filter=true`` that is the transferred column, so
  it is skipped);
- with ``--hard``, for a job run with ``soft_filter=true``: the kept inputs
  alone, the paper's hard filter (for a job without it, the transferred column);
- with ``--bounds``, two references that are not transfers, because they use
  the task's training data, which a transfer never has: "real inputs", the
  same distillation on the task's own training inputs (as many as ``--samples``
  asks for, labelled by the teacher, never by their gold labels), which tells
  whether the synthetic inputs or the distillation is the limit; and "target
  oracle", the target model's own zoo adapter for the task (``loramint zoo
  build --base-model TARGET --tasks NAME``; "-" when there is none), what the
  target model learns from the gold labels.

``--set`` passes any other transfer setting to the job (``loramint transfer
--set``), e.g. ``--set balance_labels=false``; the ablations use the job's
settings, so they see the same synthetic inputs and weighting. The ablations
are distilled in
this process with the job's settings and are not registered. A finished
transfer job with the same parameters is reused unless ``--fresh``, and so
are the figures the last results file holds for the same job and test
examples (a second run adds only missing columns); the rows of tasks a run
does not score stay in the file.
Prints one table of accuracies and one of wall time per stage; writes
``results/transfer-<source>-to-<target>.json`` and ``.md`` under
``$LORAMINT_HOME`` after every task.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STAGES = ("synthesize", "discriminator", "filter", "distill")
COLUMNS = ("source", "target_bare", "transferred", "no_filter", "seeds_only")
HEADERS = ("source + LoRA", "target bare", "transferred", "no filter", "seeds only")
BALANCED = {"balanced": "balanced", "no_filter_balanced": "no filter, balanced"}
SOFT = {"soft_filter": "soft filter"}
HARD = {"hard_filter": "hard filter"}
BOUNDS = {"real_inputs": "real inputs (bound)", "target_oracle": "target oracle (bound)"}


def source_gain(record: Any) -> float | None:
    """What the zoo recorded for the adapter: its accuracy minus the bare model's."""
    m = record.metrics
    if m.get("accuracy") is None or m.get("base_accuracy") is None:
        return None
    return float(m["accuracy"]) - float(m["base_accuracy"])


def pick_tasks(
    reg: Any, suite: Any, source: str, names: list[str] | None, n: int, min_gain: float
) -> list[Any]:
    """The named tasks, or the first ``n`` held-out classification tasks whose zoo
    adapter beat the bare source model by ``min_gain`` when the zoo evaluated it
    (an adapter that does nothing on its own model has nothing to transfer; the
    rule reads only the zoo's figures, never a transfer's)."""
    from generator.zoo.build import adapter_name

    if names:
        tasks = suite.select(names)
    else:
        tasks = [t for t in suite if t.held_out and t.is_classification]
    records = {t.name: reg.find_adapter(source, adapter_name(t)) for t in tasks}
    tasks = [t for t in tasks if records[t.name] is not None]
    if not names:
        gains = {t.name: source_gain(records[t.name]) for t in tasks}
        # an adapter the zoo did not evaluate passes only when no gain is asked for
        skipped = [t.name for t in tasks if (gains[t.name] or 0.0) < min_gain]
        if skipped:
            print(f"skipped (source gain < {min_gain}): {', '.join(skipped)}", file=sys.stderr)
        tasks = [t for t in tasks if t.name not in skipped]
    if not tasks:
        raise SystemExit(
            f"no held-out zoo adapter on {source} with a source gain >= {min_gain}: run "
            "`loramint zoo build` first (the zoo trains held-out tasks too, as their oracles)"
        )
    return tasks if names else tasks[:n]


def transfer_job(
    reg: Any, adapter_id: int, target: str, config: dict[str, Any], fresh: bool
) -> Any:
    """A succeeded transfer job for these parameters: an earlier one, or one run here now."""
    from api.cli_transfer import follow
    from generator.transfer.source import TransferRequest, submit_request, transfer_request

    request = transfer_request(reg, adapter_id, target, config=config)
    if not fresh:
        for job in reg.list_jobs(kind="transfer", state="succeeded", limit=1000):
            # read back as a request, a job queued before a setting existed has its default
            if TransferRequest.from_params(job.params) == request:
                print(f"  reusing transfer job {job.id}", file=sys.stderr)
                return job
    job = submit_request(reg, request)
    print(f"  transfer job {job.id}", file=sys.stderr)
    return follow(reg, job.id)


def score_task(
    reg: Any,
    task: Any,
    teacher: Any,
    student: Any,
    target: str,
    args: argparse.Namespace,
    earlier: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One table row. ``earlier`` is this task's row from the last results file: its
    figures are reused when they came from the same adapter, job and test examples
    (every column is seeded, so recomputing would give the same numbers)."""
    from generator.transfer.config import TransferConfig
    from generator.transfer.job import target_modules
    from generator.transfer.run import StageOutput, artifact_name
    from generator.transfer.source import distill_target, registered_adapter, source_task
    from generator.transfer.stages import filter_trust
    from generator.transfer.synthesis import clean_input
    from generator.zoo.build import adapter_name

    record = reg.find_adapter(args.source, adapter_name(task))
    source = source_task(reg, record.id)
    test = task.test[: args.eval_n]
    row: dict[str, Any] = {"task": task.name, "adapter_id": record.id, "eval_n": len(test)}
    settings = {
        "samples": args.samples,
        "distill_steps": args.steps,
        "disc_steps": args.disc_steps,
        "max_rounds": args.max_rounds,
        "min_kept": min(args.min_kept, args.samples),
        **args.settings,
    }
    job = transfer_job(reg, record.id, target, settings, args.fresh)
    row["job_id"] = job.id
    same = earlier is not None and all(earlier.get(k) == row[k] for k in row)
    old = earlier if same and earlier and not args.fresh else {}

    def measure(column: str, score: Any) -> None:
        if isinstance(old.get(column), float):
            row[column] = old[column]
            if f"{column}_seconds" in old:
                row[f"{column}_seconds"] = old[f"{column}_seconds"]
            return
        t0 = time.perf_counter()
        row[column] = score()
        row[f"{column}_seconds"] = round(time.perf_counter() - t0, 1)

    measure("source", lambda: teacher.accuracy(task, source.adapter, examples=test).accuracy)
    measure("target_bare", lambda: student.accuracy(task, examples=test).accuracy)
    if job.state != "succeeded":
        row["error"] = (job.error or job.state).strip().splitlines()[-1]
        return row
    result = job.result
    row["transferred_adapter_id"] = result["adapter_id"]
    transferred = registered_adapter(reg, result["adapter_id"])
    measure("transferred", lambda: student.accuracy(task, transferred, examples=test).accuracy)
    row["stages"] = result["stages"]
    row["wall_seconds"] = result["wall_seconds"]
    if job.started_at and job.finished_at:
        row["job_seconds"] = round((job.finished_at - job.started_at).total_seconds(), 1)
    config = TransferConfig.from_dict({**job.params["config"], "samples": job.params["samples"]})
    modules = target_modules(reg, record, target)
    raw = StageOutput.from_bytes(reg.job_artifact(job.id, artifact_name("synthesize")))
    unfiltered = raw.data["inputs"][: config.samples]
    filtered = StageOutput.from_bytes(reg.job_artifact(job.id, artifact_name("filter"))).data
    kept = filtered["kept"]
    hard = dataclasses.replace(config, soft_filter=False)  # the ablations' own inputs only
    Variant = tuple[str, list[str], Any, dict[str, float] | None]
    variants: list[Variant] = [
        ("no_filter", unfiltered, hard, None),
        ("seeds_only", [], hard, None),
    ]
    if args.balanced:  # the same inputs, each teacher label weighted alike
        balanced = dataclasses.replace(hard, balance_labels=True)
        variants += [
            ("balanced", kept, balanced, None),
            ("no_filter_balanced", unfiltered, balanced, None),
        ]
    if args.hard and config.soft_filter:  # the kept inputs alone: the paper's filter
        variants += [("hard_filter", kept, hard, None)]
    if args.soft and not config.soft_filter:  # every input the filter scored, by p(real)
        disc = StageOutput.from_bytes(reg.job_artifact(job.id, artifact_name("discriminator")))
        trust = filter_trust(source, teacher, filtered, disc)
        soft = dataclasses.replace(config, soft_filter=True)
        variants += [("soft_filter", list(trust), soft, trust)]
        row["scored"] = len(trust)
    if args.bounds:  # the task's own training inputs: what ideal inputs would give
        real_inputs = [clean_input(e.input, config.max_input_chars) for e in task.train]
        variants += [("real_inputs", real_inputs[: config.samples], hard, None)]
        oracle = reg.find_adapter(target, adapter_name(task))
        if oracle is not None:
            row["target_oracle_id"] = oracle.id
            measure(
                "target_oracle",
                lambda: (
                    student.accuracy(
                        task, registered_adapter(reg, oracle.id), examples=test
                    ).accuracy
                ),
            )

    def distilled_accuracy(inputs: list[str], cfg: Any, trust: dict[str, float] | None) -> float:
        distilled, _ = distill_target(source, teacher, student, inputs, cfg, modules, trust=trust)
        adapter = (distilled.peft_config, distilled.weights)
        return float(student.accuracy(task, adapter, examples=test).accuracy)

    for column, inputs, cfg, trusted in variants:
        measure(
            column,
            lambda inputs=inputs, cfg=cfg, trusted=trusted: distilled_accuracy(
                inputs, cfg, trusted
            ),
        )
    return row


def merged(row: dict[str, Any], earlier: dict[str, Any] | None) -> dict[str, Any]:
    """``row`` plus the columns of ``earlier`` (the file's row for the task) that this
    run did not score, when both come from the same adapter, job and test examples."""
    keys = ("task", "adapter_id", "eval_n", "job_id")
    if earlier is None or any(earlier.get(k) != row.get(k) for k in keys):
        return row
    return {**earlier, **row}


def fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"


def markdown(rows: list[dict[str, Any]], source: str, target: str, args: argparse.Namespace) -> str:
    columns = dict(zip(COLUMNS, HEADERS, strict=True))
    # a column shows when this run scores it or a row (from an earlier run) has it
    if args.balanced or any(c in r for r in rows for c in BALANCED):
        columns |= BALANCED
    if args.soft or any(c in r for r in rows for c in SOFT):
        columns |= SOFT
    if args.hard or any(c in r for r in rows for c in HARD):
        columns |= HARD
    if args.bounds or any(c in r for r in rows for c in BOUNDS):
        columns |= BOUNDS
    lines = [
        f"Trans-LoRA `{source}` -> `{target}`: {len(rows)} held-out tasks, {args.samples} "
        f"synthetic samples, {args.steps} distillation steps, accuracy on <= {args.eval_n} "
        "test examples"
        + (
            ", settings " + ", ".join(f"{k}={v}" for k, v in args.settings.items()) + "."
            if args.settings
            else "."
        ),
        "",
        "| task | " + " | ".join(columns.values()) + " | kept / generated |",
        "|---|" + "---:|" * len(columns) + "---:|",
    ]
    for r in rows:
        stages = r.get("stages") or {}
        generated = stages.get("synthesize", {}).get("generated", 0) + stages.get("filter", {}).get(
            "extra_generated", 0
        )
        kept = stages.get("filter", {}).get("kept")
        counts = f"{kept} / {generated}" if kept is not None else r.get("error", "-")
        lines.append(
            f"| {r['task']} | " + " | ".join(fmt(r.get(c)) for c in columns) + f" | {counts} |"
        )
    means = {c: [r[c] for r in rows if isinstance(r.get(c), float)] for c in columns}
    lines.append(
        "| **mean** | "
        + " | ".join(fmt(sum(v) / len(v)) if v else "-" for v in means.values())
        + " | |"
    )
    extra = {"job_seconds": "job total"} | {
        f"{c}_seconds": h for c, h in columns.items() if c not in COLUMNS[:3]
    }
    lines += ["", "Wall time per stage (s, this machine):", ""]
    lines += ["| task | " + " | ".join([*STAGES, *extra.values()]) + " |"]
    lines += ["|---|" + "---:|" * (len(STAGES) + len(extra))]
    for r in rows:
        wall = r.get("wall_seconds") or {}
        cells = [str(wall.get(s, "-")) for s in STAGES] + [str(r.get(k, "-")) for k in extra]
        lines.append(f"| {r['task']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", type=int, default=5, help="held-out tasks (default 5)")
    ap.add_argument("--names", default=None, help="comma-separated task names instead")
    ap.add_argument("--samples", type=int, default=64, help="filtered synthetic inputs")
    ap.add_argument("--steps", type=int, default=60, help="distillation steps")
    ap.add_argument("--disc-steps", type=int, default=30, help="discriminator steps")
    ap.add_argument("--max-rounds", type=int, default=20, help="rejection-sampling batches")
    ap.add_argument("--min-kept", type=int, default=1, help="fewer kept fails the job")
    ap.add_argument("--eval-n", type=int, default=100, help="test examples per task")
    ap.add_argument(
        "--min-gain",
        type=float,
        default=0.1,
        help="without --names: only adapters that beat the bare source model by this much",
    )
    ap.add_argument("--source", default="smollm2-135m-instruct")
    ap.add_argument("--target", default="gemma3-270m")
    ap.add_argument("--suite", type=Path, default=None, help="task suite folder")
    ap.add_argument("--fresh", action="store_true", help="never reuse a finished job")
    ap.add_argument(
        "--balanced",
        action="store_true",
        help="also distil the kept and the raw inputs with balance_labels (two more columns)",
    )
    ap.add_argument(
        "--soft",
        action="store_true",
        help="for jobs run with soft_filter=false: also distil on every input the filter "
        "scored, drawn by the discriminator's p(real) (one more column)",
    )
    ap.add_argument(
        "--hard",
        action="store_true",
        help="for jobs run with soft_filter=true: also distil on the kept inputs alone, the "
        "paper's hard filter (one more column)",
    )
    ap.add_argument(
        "--bounds",
        action="store_true",
        help="also score two references that use the task's training data, which a transfer "
        "never sees: distillation on its real training inputs, and the target model's own "
        "zoo adapter (two more columns)",
    )
    ap.add_argument(
        "--set",
        dest="pairs",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another transfer setting for the jobs (repeatable), as `loramint transfer --set`",
    )
    args = ap.parse_args()
    if min(args.tasks, args.samples, args.steps, args.disc_steps, args.eval_n) < 1:
        ap.error("--tasks, --samples, --steps, --disc-steps and --eval-n must be positive")
    if args.max_rounds < 0 or args.min_kept < 0:
        ap.error("--max-rounds and --min-kept must be >= 0")

    from api.cli_zoo import open_suite
    from generator.tasks.evaluation import Evaluator
    from generator.transfer.config import TransferConfig, parse_settings
    from registry.blobs import update_atomic, write_atomic
    from registry.errors import InvalidInput
    from registry.service import Registry

    try:
        args.settings = parse_settings(args.pairs)
        TransferConfig.from_dict(args.settings)  # unknown keys and bad values, before any work
    except InvalidInput as e:
        ap.error(str(e))
    reg = Registry()
    target = reg.prepare_base_model(args.target).name
    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
    tasks = pick_tasks(
        reg, open_suite(args.suite, build=False), args.source, names, args.tasks, args.min_gain
    )
    print(f"loading {args.source} and {target}", file=sys.stderr)
    teacher = Evaluator.from_path(reg.base_model_path(args.source))
    student = Evaluator.from_path(reg.base_model_path(target))
    slug = f"transfer-{args.source}-to-{target}".replace("/", "_")
    path = reg.settings.results_dir / f"{slug}.json"
    earlier = {}
    if path.exists() and not args.fresh:
        earlier = {r["task"]: r for r in json.loads(path.read_text()).get("tasks", [])}
    rows: list[dict[str, Any]] = []
    md = ""

    def update(kept: bytes | None) -> bytes:
        """The results with this run's rows, and the rows of tasks it does not score as
        the file holds them now; the markdown table is written alongside."""
        nonlocal md
        scored = {r["task"] for r in rows}
        now = json.loads(kept).get("tasks", []) if kept is not None else []
        current = {**earlier, **{r["task"]: r for r in now}}
        others = [r for name, r in current.items() if name not in scored]
        md = markdown([*rows, *others], args.source, target, args)
        write_atomic(path.with_suffix(".md"), md.encode())
        settings = vars(args) | {"suite": str(args.suite)}
        payload = {"settings": settings, "tasks": [*rows, *others]}
        return json.dumps(payload, indent=2, default=str).encode()

    for i, task in enumerate(tasks, 1):
        print(f"[{i}/{len(tasks)}] {task.name}", file=sys.stderr)
        row = score_task(reg, task, teacher, student, target, args, earlier.get(task.name))
        rows.append(merged(row, earlier.get(task.name)))
        # the files follow every finished task, so an interrupted run keeps what it
        # measured; the rows of tasks this run does not score stay, read again under a
        # lock, so runs on other tasks at the same time keep theirs
        update_atomic(path, update)
    sys.stdout.write(md)
    print(f"results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
