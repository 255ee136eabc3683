#!/usr/bin/env bash
# The suite-v2 quality study in one command, into $LORAMINT_HOME: the real base
# model, task suite v2, its zoo (held-out tasks first, with their base and
# oracle evaluation; then the training tasks), SG-LoRA and ICM-LoRA trained on
# every training task's wordings, SG-LoRA fine-tuned end to end through the base
# model (Text-to-LoRA's task-loss training, FT_STEPS steps), the multi-task LoRA,
# the held-out evaluation (`loramint eval generators`: JSON, markdown and PNG
# under results/), the generator with the best mean share of the oracle's gain
# on the within-family held-out tasks pinned as the served one and checked over
# REST on five of them (bench/roundtrip.py), and the scaling study
# (bench/scaling.py).
#
#   LORAMINT_HOME=DIR [JOBS=N] [DEVICE=auto] [FT_STEPS=400] bash bench/suite_v2.sh
#
# JOBS: zoo builds running side by side on disjoint task lists (default 1; on a
# GPU machine with many cores, 4-8); with JOBS above 1, ICM-LoRA's training, the
# end-to-end fine-tuning and the multi-task LoRA also run side by side. Every
# step resumes where a killed run stopped, except a multi-task LoRA or a
# generator that was training. On 2 CPU cores the zoo alone takes about 7 hours
# (254 adapters at about 97 s) and the multi-task LoRAs about as long again: a
# GPU job (one H200, JOBS=8 DEVICE=cuda: the zoo in 10 minutes). Building the suite
# needs Debian's wordnet-base; on a machine without it, copy $LORAMINT_HOME/tasks/v2
# from one that built it (the build is deterministic) and this script keeps it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="$repo/.venv/bin"
: "${LORAMINT_HOME:?set LORAMINT_HOME to the home to build}"
jobs="${JOBS:-1}"
device="${DEVICE:-auto}"
ft_steps="${FT_STEPS:-400}"
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
stage() { echo "== $(date -u +%FT%TZ) $*" >&2; }
threads=$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))
zoo() {  # one zoo build per line of task names, side by side, sharing the cores
  local pids=() extra=("$@")
  while read -r list; do
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}" "$bin/loramint" zoo build --suite "$suite" --device "$device" "${extra[@]}" --tasks "$list" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}
stage zoo: held-out tasks
names true | zoo
stage zoo: training tasks
names false | zoo --no-eval
"$bin/loramint" zoo report
generator() {  # the id of the newest generator named $1, if any
  "$bin/loramint" generator list --json | "$bin/python" -c '
import json, sys
ids = [g["id"] for g in json.load(sys.stdin) if g["name"] == sys.argv[1]]
print(max(ids) if ids else "")' "$1"
}
train() {  # train() NAME ARGS...: a generator, unless one of that name exists
  local name="$1"
  shift
  [ -n "$(generator "$name")" ] || "$bin/loramint" "$@" --name "$name"
}
pids=()
side() {  # run side by side when JOBS > 1, else in turn
  if [ "$jobs" -gt 1 ]; then "$@" & pids+=($!); else "$@"; fi
}
stage generators
train sg-v2 generator train --method sg-lora --suite "$suite" --device "$device"
side train icm-v2 generator train --method icm-lora --suite "$suite" --device "$device"
side train sg-v2-e2e generator finetune "$(generator sg-v2)" --suite "$suite" \
  --steps "$ft_steps" --lr 3e-4 --device "$device"
side "$bin/loramint" zoo multitask --suite "$suite" --device "$device"
for pid in "${pids[@]}"; do wait "$pid"; done
stage evaluation
"$bin/loramint" eval generators --suite "$suite" --device "$device"
stage serving the best generator
read -r best method tasks < <("$bin/python" - "$LORAMINT_HOME/results" <<'PY'
import glob, json, sys
report = json.load(open(sorted(glob.glob(f"{sys.argv[1]}/quality-*.json"))[0]))
rows = [t for t in report["tasks"] if t["split"] == "held_out"] or report["tasks"]
share = {c: sum(t["gain_share"][c] for t in rows) / len(rows) for c in report["generators"]}
best = max(share, key=share.get)
print(report["generators"][best], best.split("+")[0], ",".join(t["task"] for t in rows[:5]))
PY
)
"$bin/loramint" generator pin "$best"
"$bin/python" "$repo/bench/roundtrip.py" --suite "$suite" --method "$method" --tasks "$tasks"
stage scaling
"$bin/python" "$repo/bench/scaling.py" --suite "$suite" --device "$device"
stage done
