"""A generated adapter, downloaded as a zip over HTTP, scores what the harness reported.

    .venv/bin/python bench/roundtrip.py [--method sg-lora] [--tasks a,b] [--base-model M]

Reads the quality report `loramint eval generators` wrote
($LORAMINT_HOME/results/quality-<base>.json), starts a real server on a
scratch copy of the registry (as bench/load.py does), and for each task asks
`POST /v1/generate` for the same description and seed the harness used (the
server uses the method's latest generator; its column of the report is the
one compared), downloads `/v1/adapters/{id}/download`, unzips it, loads it with
`PeftModel.from_pretrained` on a freshly loaded base model and scores the
task's test split. Prints both accuracies per task; exits 1 if any differ.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import reader_key, scratch_home, start_server  # noqa: E402
from registry.settings import Settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="sg-lora", choices=["sg-lora", "icm-lora"])
    ap.add_argument("--tasks", default="", help="comma-separated (default: all in the report)")
    ap.add_argument("--base-model", default="smollm2-135m-instruct")
    ap.add_argument(
        "--home", type=Path,
        default=Settings.from_env().home,
    )  # fmt: skip
    args = ap.parse_args()
    report_path = args.home / "results" / f"quality-{args.base_model.replace('/', '_')}.json"
    if not report_path.exists():
        raise SystemExit(f"no quality report at {report_path}: run `loramint eval generators`")
    report = json.loads(report_path.read_text())
    columns = {int(i): c for c, i in report["generators"].items()}
    seed = int(report["settings"]["seed"])
    rows = {r["task"]: r for r in report["tasks"]}
    names = [t for t in args.tasks.split(",") if t] or list(rows)
    unknown = [t for t in names if t not in rows]
    if unknown:
        raise SystemExit(f"tasks not in the report: {unknown}")

    import torch
    from peft import PeftModel

    from generator.tasks.evaluation import Evaluator, load_base
    from generator.tasks.task import TaskSuite
    from registry.service import Registry

    os.environ.setdefault("LORAMINT_HOME", str(args.home))
    suite = TaskSuite(args.home / "tasks" / "default")
    base_path = Registry().base_model_path(args.base_model)
    models = Settings.from_env(dict(os.environ) | {"LORAMINT_HOME": str(args.home)}).model_cache
    mismatches = 0
    with tempfile.TemporaryDirectory(prefix="loramint-roundtrip-") as tmp:
        home = Path(tmp) / "home"
        scratch_home(args.home, home)
        headers = {"Authorization": f"Bearer {reader_key(home)}"}
        proc, url = start_server(home, models, 0.0)
        print("| task | generator (column) | harness | via REST zip + PeftModel | same |")
        print("|---|---|---:|---:|---|")
        try:
            for name in names:
                task = suite.load(name)
                body = {
                    "description": task.description, "base_model": args.base_model,
                    "method": args.method, "seed": seed,
                }  # fmt: skip
                made = httpx.post(f"{url}/v1/generate", json=body, headers=headers, timeout=300)
                if made.status_code != 201:
                    raise SystemExit(f"generate failed: {made.status_code} {made.text}")
                got = made.json()
                generator_id = int(got["adapter"]["meta"]["generator_id"])
                column = columns.get(generator_id)
                if column is None:
                    raise SystemExit(
                        f"the server generated with generator {generator_id}, which the report "
                        f"did not score ({report['generators']}): rerun `loramint eval generators`"
                    )
                zipped = httpx.get(f"{url}{got['download_url']}", headers=headers, timeout=300)
                zipped.raise_for_status()
                folder = Path(tmp) / name
                zipfile.ZipFile(io.BytesIO(zipped.content)).extractall(folder)
                model, tokenizer = load_base(base_path)
                peft_model = PeftModel.from_pretrained(model, str(folder))
                peft_model.eval()
                with torch.no_grad():
                    acc = Evaluator(peft_model, tokenizer).accuracy(task).accuracy
                expected = float(rows[name][column])
                same = abs(acc - expected) < 1e-9
                mismatches += not same
                print(
                    f"| {name} | {generator_id} ({column}) | {expected:.3f} | {acc:.3f} | "
                    f"{'yes' if same else 'NO'} |", flush=True,
                )  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
