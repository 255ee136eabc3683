#!/usr/bin/env bash
# The suite-v2 quality study in one command, into $LORAMINT_HOME: the real base
# model, task suite v2, its zoo (held-out tasks first, with their base and
# oracle evaluation; then the training tasks), SG-LoRA and ICM-LoRA trained on
# every training task's wordings, the multi-task LoRA, the held-out evaluation
# (`loramint eval generators`: JSON, markdown and PNG under results/) and the
# scaling study (bench/scaling.py).
#
#   LORAMINT_HOME=DIR [JOBS=N] [DEVICE=auto] bash bench/suite_v2.sh
#
# JOBS: zoo builds running side by side on disjoint task lists (default 1; on a
# GPU machine with many cores, 4-8). Every step resumes where a killed run
# stopped, except a multi-task LoRA that was training. On 2 CPU cores the zoo
# alone takes about 7 hours (254 adapters at about 97 s) and the multi-task
# LoRAs about as long again: a GPU job.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="$repo/.venv/bin"
: "${LORAMINT_HOME:?set LORAMINT_HOME to the home to build}"
jobs="${JOBS:-1}"
device="${DEVICE:-auto}"
suite="$LORAMINT_HOME/tasks/v2"
"$bin/loramint" db upgrade
"$bin/loramint" models prepare smollm2-135m-instruct
[ -f "$suite/manifest.json" ] || "$bin/loramint" tasks build --suite v2
names() {  # suite v2's tasks with held_out == $1, in $jobs comma-separated lines, taking
  # the families in turn so that a run stopped early has covered every family alike
  "$bin/python" - "$suite" "$1" "$jobs" <<'PY'
import itertools, json, sys
root, held, jobs = sys.argv[1], sys.argv[2] == "true", int(sys.argv[3])
families = {}
for t in json.load(open(f"{root}/manifest.json"))["tasks"]:
    if t["held_out"] == held:
        families.setdefault(t["family"], []).append(t["name"])
tasks = [n for turn in itertools.zip_longest(*families.values()) for n in turn if n]
for part in range(jobs):
    if tasks[part::jobs]:
        print(",".join(tasks[part::jobs]))
PY
}
zoo() {  # one zoo build per line of task names, side by side
  local pids=() extra=("$@")
  while read -r list; do
    "$bin/loramint" zoo build --suite "$suite" --device "$device" "${extra[@]}" --tasks "$list" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}
names true | zoo
names false | zoo --no-eval
"$bin/loramint" zoo report
"$bin/loramint" generator train --method sg-lora --suite "$suite" --name sg-v2
"$bin/loramint" generator train --method icm-lora --suite "$suite" --name icm-v2
"$bin/loramint" zoo multitask --suite "$suite" --device "$device"
"$bin/loramint" eval generators --suite "$suite" --device "$device"
"$bin/python" "$repo/bench/scaling.py" --suite "$suite" --device "$device"
