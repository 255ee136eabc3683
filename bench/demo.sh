#!/usr/bin/env bash
# Time `make demo` from a fresh clone and an empty LORAMINT_HOME until the
# server answers /health, then a second run on the same home.
#
#   bash bench/demo.sh [WORKDIR]      (default WORKDIR: a new temporary folder)
#
# Port 8000 must be free. Prints "run N: server up after S s" for each run.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
rm -rf "$work/clone" "$work/home"
git clone -q "$repo" "$work/clone"
cd "$work/clone"
export LORAMINT_HOME="$work/home"
unset LORAMINT_MODEL_CACHE LORAMINT_DATABASE_URL
if curl -sf http://127.0.0.1:8000/health >/dev/null; then
  echo "something already answers on port 8000: stop it first" >&2
  exit 2
fi
for run in 1 2; do
  t0=$(date +%s)
  make demo >"$work/demo-run$run.log" 2>&1 &
  pid=$!
  until curl -sf http://127.0.0.1:8000/health >/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run $run: make demo exited before serving; see $work/demo-run$run.log" >&2
      exit 1
    fi
    sleep 1
  done
  echo "run $run: server up after $(( $(date +%s) - t0 )) s"
  grep -a "accuracy on" "$work/demo-run$run.log" || true
  pkill -TERM -f "loramint demo" || true
  wait "$pid" || true
  sleep 2
done
