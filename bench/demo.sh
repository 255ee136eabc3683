#!/usr/bin/env bash
# Time `make demo` from a fresh clone and an empty LORAMINT_HOME until the
# server answers /health, then a second run on the same home.
#
#   bash bench/demo.sh [--cold] [WORKDIR]   (default WORKDIR: a new temporary folder)
#
# --cold gives pip an empty cache of its own (every package is downloaded, as on
# a fresh machine); without it pip's usual cache serves what it holds.
# Port 8000 must be free. Prints each step's time, the accuracy line and
# "run N: server up after S s" for each run.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cold=0
if [ "${1:-}" = "--cold" ]; then cold=1; shift; fi
work="${1:-$(mktemp -d)}"
rm -rf "$work/clone" "$work/home"
git clone -q "$repo" "$work/clone"
cd "$work/clone"
export LORAMINT_HOME="$work/home"
if [ "$cold" = 1 ]; then
  rm -rf "$work/pip-cache"
  export PIP_CACHE_DIR="$work/pip-cache"
fi
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
  grep -a -e "took" -e "accuracy on" "$work/demo-run$run.log" || true
  pkill -TERM -f "loramint demo" || true
  wait "$pid" || true
  sleep 2
done
