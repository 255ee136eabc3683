"""A generated adapter, downloaded as a zip over HTTP, scores what the harness reported.

    .venv/bin/python bench/roundtrip.py [--method sg-lora] [--tasks a,b] [--base-model M]
        [--suite PATH]
    .venv/bin/python bench/roundtrip.py --fewshot 16 [--fewshot-method refine]

Zero-shot (the default): reads the quality report `loramint eval generators`
wrote ($LORAMINT_HOME/results/quality-<base>.json), starts a real server on a
scratch copy of the registry (as bench/load.py does), and for each task asks
`POST /v1/generate` for the same description and seed the harness used (the
server uses the method's serving generator; its column of the report is the
one compared), downloads `/v1/adapters/{id}/download`, unzips it, loads it with
`PeftModel.from_pretrained` on a freshly loaded base model and scores the
task's test split. Prints both accuracies per task; exits 1 if any differ.

With ``--fewshot K``: reads the cells `loramint eval fewshot` kept
($LORAMINT_HOME/results/fewshot-<base>.json) and sends, per task, the first
draw of K examples the harness used (with their label set, and the method's
weighting or refinement settings) to `POST /v1/generate` with SG-LoRA. The
response must carry the held-back estimate; the downloaded zip, loaded with
PEFT, must score the harness's cell for that draw and method.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import reader_key, scratch_home, start_server  # noqa: E402
from registry.settings import Settings  # noqa: E402

FEWSHOT_METHODS = ("selection", "weighting", "refine")


@dataclass
class Case:
    """One request to the server and how to read the harness's figure for it."""

    task: str
    body: dict[str, Any]
    expected: Callable[[dict[str, Any]], tuple[float, str]]  # response -> (figure, from what)
    check: Callable[[dict[str, Any]], str | None] = lambda response: None  # a problem, or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="sg-lora", choices=["sg-lora", "icm-lora"])
    ap.add_argument("--tasks", default="", help="comma-separated (default: all in the report)")
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument("--home", type=Path, default=Settings.from_env().home)
    ap.add_argument("--suite", type=Path, help="task suite folder (default: HOME/tasks/default)")
    ap.add_argument("--fewshot", type=int, default=0, help="examples per request (0: none)")
    ap.add_argument(
        "--fewshot-method", default="refine", choices=FEWSHOT_METHODS,
        help="the few-shot path compared (with --fewshot)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.fewshot < 0:
        raise SystemExit("--fewshot must be at least 0")
    os.environ.setdefault("LORAMINT_HOME", str(args.home))
    args.suite = args.suite or args.home / "tasks" / "default"
    cases = fewshot_cases(args) if args.fewshot else zero_shot_cases(args)
    sys.exit(1 if run(args, cases) else 0)


def read_results(home: Path, name: str, made_by: str) -> dict[str, Any]:
    path = home / "results" / name
    if not path.exists():
        raise SystemExit(f"no results at {path}: run `{made_by}`")
    found: dict[str, Any] = json.loads(path.read_text())
    return found


def chosen(args: argparse.Namespace, available: list[str]) -> list[str]:
    names = [t for t in args.tasks.split(",") if t] or available
    unknown = [t for t in names if t not in available]
    if unknown:
        raise SystemExit(f"tasks not in the results: {unknown}")
    return names


def zero_shot_cases(args: argparse.Namespace) -> list[Case]:
    """The report of `loramint eval generators`: each task's description and seed."""
    from generator.tasks.task import TaskSuite

    name = f"quality-{args.base_model.replace('/', '_')}.json"
    report = read_results(args.home, name, "loramint eval generators")
    columns = {int(i): c for c, i in report["generators"].items()}
    seed = int(report["settings"]["seed"])
    rows = {r["task"]: r for r in report["tasks"]}
    suite = TaskSuite(args.suite)

    def expected(row: dict[str, Any]) -> Callable[[dict[str, Any]], tuple[float, str]]:
        def read(response: dict[str, Any]) -> tuple[float, str]:
            generator_id = int(response["adapter"]["meta"]["generator_id"])
            if generator_id not in columns:
                raise SystemExit(
                    f"the server generated with generator {generator_id}, which the report "
                    f"did not score ({report['generators']}): rerun `loramint eval generators`"
                )
            return float(row[columns[generator_id]]), f"generator {generator_id}"

        return read

    return [
        Case(
            task,
            {
                # the wording the harness generated from (suite v2: the evaluation one)
                "description": rows[task].get("description") or suite.load(task).description,
                "base_model": args.base_model,
                "method": args.method,
                "seed": seed,
            },
            expected(rows[task]),
        )  # fmt: skip
        for task in chosen(args, list(rows))
    ]


def fewshot_cases(args: argparse.Namespace) -> list[Case]:
    """The cells of `loramint eval fewshot`: each task's first draw of K examples."""
    from generator.quality.fewshot import Cells, draw
    from generator.tasks.task import TaskSuite

    name = f"fewshot-{args.base_model.replace('/', '_')}.json"
    results = read_results(args.home, name, f"loramint eval fewshot --ks {args.fewshot}")
    settings, cells = results["settings"], results["cells"]
    method, seed = args.fewshot_method, int(settings["seed"])
    scored = sorted(
        {key.split("|")[0] for key in cells if key.endswith(f"|{args.fewshot}|0|{method}")}
    )
    suite = TaskSuite(args.suite)
    cases = []
    for task_name in chosen(args, scored):
        task = suite.load(task_name)
        shots = draw(task, args.fewshot, 0, seed)
        figure = float(cells[Cells.key(task_name, args.fewshot, 0, method)]["accuracy"])
        body: dict[str, Any] = {
            "description": task.description, "base_model": args.base_model,
            "method": "sg-lora", "seed": seed, "labels": list(task.labels),
            "examples": [{"input": e.input, "output": e.output} for e in shots.examples],
            "time_budget_s": 600,
        }  # fmt: skip
        if method == "weighting":
            body |= {"weighting": True}
        if method == "refine":
            body |= {"refine_steps": int(settings["refine_steps"])}
        cases.append(Case(task_name, body, fixed(figure, f"draw 0, {method}"), estimated))
    return cases


def fixed(figure: float, label: str) -> Callable[[dict[str, Any]], tuple[float, str]]:
    return lambda response: (figure, label)


def estimated(response: dict[str, Any]) -> str | None:
    """A few-shot response must say what it chose and how good it expects it to be."""
    report = response.get("fewshot") or {}
    estimate = report.get("estimate") or {}
    if response.get("job") is not None:
        return "the training went to a job (over the time budget)"
    if estimate.get("adapter") is None or estimate.get("bare") is None:
        return f"no held-back estimate in the response: {estimate}"
    return None


def run(args: argparse.Namespace, cases: list[Case]) -> int:
    """Every case through the server, downloaded, loaded with PEFT and scored; the
    number that differ from the harness's figure (or lack what the response owes)."""
    import torch
    from peft import PeftModel

    from generator.tasks.evaluation import Evaluator, load_base
    from generator.tasks.task import TaskSuite
    from registry.service import Registry

    suite = TaskSuite(args.suite)
    base_path = Registry().base_model_path(args.base_model)
    models = Settings.from_env(dict(os.environ) | {"LORAMINT_HOME": str(args.home)}).model_cache
    failures = 0
    with tempfile.TemporaryDirectory(prefix="loramint-roundtrip-") as tmp:
        home = Path(tmp) / "home"
        scratch_home(args.home, home)
        headers = {"Authorization": f"Bearer {reader_key(home)}"}
        proc, url = start_server(home, models, 0.0)
        print("| task | figure of | harness | REST zip + PeftModel | estimate (bare) | same |")
        print("|---|---|---:|---:|---|---|")
        try:
            for case in cases:
                made = httpx.post(
                    f"{url}/v1/generate", json=case.body, headers=headers, timeout=900
                )
                if made.status_code != 201:
                    raise SystemExit(f"generate failed: {made.status_code} {made.text}")
                got = made.json()
                expected, label = case.expected(got)
                problem = case.check(got)
                zipped = httpx.get(f"{url}{got['download_url']}", headers=headers, timeout=300)
                zipped.raise_for_status()
                folder = Path(tmp) / f"{case.task}-{got['adapter']['id']}"
                zipfile.ZipFile(io.BytesIO(zipped.content)).extractall(folder)
                model, tokenizer = load_base(base_path)
                peft_model = PeftModel.from_pretrained(model, str(folder))
                peft_model.eval()
                with torch.no_grad():
                    acc = Evaluator(peft_model, tokenizer).accuracy(suite.load(case.task)).accuracy
                same = math.isclose(acc, expected, abs_tol=1e-9) and problem is None
                failures += not same
                estimate = (got.get("fewshot") or {}).get("estimate") or {}
                shown = (
                    f"{estimate['adapter']} ({estimate['bare']})"
                    if estimate.get("adapter")
                    else "-"
                )
                print(
                    f"| {case.task} | {label} | {expected:.3f} | {acc:.3f} | {shown} | "
                    f"{'yes' if same else 'NO' + (f': {problem}' if problem else '')} |",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return failures


if __name__ == "__main__":
    main()
