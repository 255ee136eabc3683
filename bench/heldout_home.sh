#!/usr/bin/env bash
# Build the registry the held-out tables (eval generators, eval fewshot,
# roundtrip, generate --fewshot) are measured on, into $LORAMINT_HOME:
# the real base model, the default task suite, the zoo (held-out tasks first,
# with their base and oracle evaluation; then the training tasks, whose
# evaluation no held-out figure reads) and the two generators.
#
#   LORAMINT_HOME=DIR bash bench/heldout_home.sh [SKIP_TASKS]
#
# SKIP_TASKS: comma-separated tasks not to train (e.g. held-out tasks whose
# oracle never gains 0.1 over the bare model, which the few-shot table skips).
# Every step resumes where a killed run stopped. About 100 minutes on 2 cores.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="$repo/.venv/bin"
: "${LORAMINT_HOME:?set LORAMINT_HOME to the home to build}"
skip="${1:-}"
"$bin/loramint" db upgrade
"$bin/loramint" models prepare smollm2-135m-instruct
"$bin/loramint" tasks build
names() {  # the default suite's tasks with held_out == $1, minus SKIP_TASKS
  "$bin/python" - "$1" "$skip" <<'PY'
import json, os, sys
held, skip = sys.argv[1] == "true", set(filter(None, sys.argv[2].split(",")))
manifest = json.load(open(os.path.join(os.environ["LORAMINT_HOME"], "tasks", "default", "manifest.json")))
print(",".join(t["name"] for t in manifest["tasks"] if t["held_out"] == held and t["name"] not in skip))
PY
}
"$bin/loramint" zoo build --tasks "$(names true)"
"$bin/loramint" zoo build --no-eval --tasks "$(names false)"
"$bin/loramint" generator train --method sg-lora
"$bin/loramint" generator train --method icm-lora
