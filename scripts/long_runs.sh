#!/usr/bin/env bash
# Long, resumable sweeps on a frozen copy of one commit of this code.
#
#   bash scripts/long_runs.sh start EXPERIMENT SEED [COMMIT]   # in the background; log in the sweep dir
#   bash scripts/long_runs.sh status EXPERIMENT SEED
#   bash scripts/long_runs.sh stop EXPERIMENT SEED            # SIGTERM to the sweep and its workers
#
# The code is installed (not editable) from COMMIT (default: the commit the sweep's runs
# recorded when resuming, else HEAD, which must then be clean) into
# $ATBPTT_FROZEN/<commit>/ (default ~/.cache/atbptt-frozen, outside the checkout), so edits to
# the working tree never reach running jobs, and every run records that commit as
# "<commit> (declared)" (ATBPTT_GIT_COMMIT; git cannot see an installed copy). The sweep directory is fixed,
# results/<experiment>/runs/seed<SEED>/: starting the same sweep again resumes every
# unfinished run from its last checkpoint (one per evaluation) and skips finished ones, so
# a sweep can span machines or sessions as long as the run directories (checkpoint.pt
# included) travel with it. Two jobs at a time with one torch thread each (joblib launcher).
#
#   bash scripts/long_runs.sh chain "EXPERIMENT SEED [COMMIT]" ...  # one sweep after another
#
# chain runs the sweeps in turn in the background (each waits for the one before, a sweep
# already running included), log and pid in results/long_runs_chain.{log,pid}; a sweep
# without COMMIT resumes on its recorded commit, or starts on HEAD as it is when chain is
# called (later commits do not reach it). `stop` on the running sweep lets the chain go on;
# `kill -- -$(cat results/long_runs_chain.pid)` ends the chain (the running sweep goes on).
# EXTRA_OVERRIDES (environment, space-separated Hydra overrides) are appended to every sweep
# of `start`: for tests and one-off budgets; each run records its config.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() {
  echo "usage: bash scripts/long_runs.sh start|status|stop EXPERIMENT SEED [COMMIT]" >&2
  echo "       bash scripts/long_runs.sh chain \"EXPERIMENT SEED [COMMIT]\" ..." >&2
  exit 2
}
check_item() {  # EXPERIMENT SEED [COMMIT]: one line and exit 2 if bad
  case "${2:-}" in ''|*[!0-9]*)
    echo "long_runs.sh: SEED must be a non-negative integer, got '${2:-}'" >&2; exit 2 ;; esac
  [ -f "conf/experiment/${1:-}.yaml" ] || {
    echo "long_runs.sh: unknown experiment '${1:-}' (conf/experiment/*.yaml)" >&2; exit 2; }
  [ -z "${3:-}" ] || git rev-parse -q --verify "${3}^{commit}" >/dev/null || {
    echo "long_runs.sh: unknown COMMIT '${3}'" >&2; exit 2; }
}
recorded_commit() {  # $1: sweep dir -> the commit its runs recorded, if any
  cat "$1"/*/run.json 2>/dev/null | grep -o '"git_commit": "[0-9a-f]\{40\}' | head -1 \
    | grep -o '[0-9a-f]\{40\}' || true
}
if [ "${1:-}" = chain ]; then
  shift
  [ $# -ge 1 ] || usage
  head=$(git rev-parse HEAD)
  items=()
  for item in "$@"; do
    # shellcheck disable=SC2086
    set -- $item
    check_item "$@"
    commit=${3:-$(recorded_commit "results/$1/runs/seed$2")}
    if [ -z "$commit" ]; then
      [ -z "$(git status --porcelain --untracked-files=no)" ] || {
        echo "long_runs.sh: the working tree has uncommitted changes; commit them or name a COMMIT" >&2
        exit 2; }
      commit=$head
    fi
    items+=("$1 $2 $(git rev-parse "$commit")")
  done
  chainpid=results/long_runs_chain.pid
  if [ -f "$chainpid" ] && kill -0 "$(cat "$chainpid")" 2>/dev/null; then
    echo "long_runs.sh: a chain is already running (pid $(cat "$chainpid"))" >&2; exit 2
  fi
  nohup setsid bash -c '
    for item in "$@"; do
      set -- $item
      pidfile="results/$1/runs/seed$2/sweep.pid"
      if ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
        echo "== $(date -u +%FT%TZ) chain: $item"
        bash scripts/long_runs.sh start "$@" || continue
      fi
      while [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; do sleep 30; done
    done
    echo "== $(date -u +%FT%TZ) chain: done"' chain "${items[@]}" \
    >> results/long_runs_chain.log 2>&1 < /dev/null &
  echo $! > "$chainpid"
  printf 'chain (pid %s):\n' "$!"; printf '  %s\n' "${items[@]}"
  exit 0
fi
[ $# -ge 3 ] || usage
action=$1 experiment=$2 seed=$3
check_item "$experiment" "$seed" "${4:-}"
sweep_dir="results/$experiment/runs/seed$seed"
pidfile="$sweep_dir/sweep.pid"
BIN=${BIN:-.venv/bin}
JOBS=${JOBS:-2}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

freeze() {  # $1: commit -> prints the frozen site directory
  local commit=$1 dir="${ATBPTT_FROZEN:-$HOME/.cache/atbptt-frozen}/$1"
  if [ ! -f "$dir/.done" ]; then
    rm -rf "$dir" && mkdir -p "$dir/src"
    git archive "$commit" | tar -x -C "$dir/src"
    "$BIN/pip" install -q --no-deps --target "$dir/lib" "$dir/src" >&2
    touch "$dir/.done"
  fi
  echo "$dir/lib"
}

case "$action" in
  start)
    if running; then echo "long_runs.sh: $sweep_dir is already running (pid $(cat "$pidfile"))" >&2; exit 2; fi
    # resuming: the commit the sweep started with, so that every run is one commit's
    recorded=$(recorded_commit "$sweep_dir")
    commit=$(git rev-parse "${4:-${recorded:-HEAD}}")
    if [ -z "${4:-}${recorded}" ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then
      echo "long_runs.sh: the working tree has uncommitted changes; commit them or name a COMMIT" >&2; exit 2
    fi
    lib=$(freeze "$commit")
    mkdir -p "$sweep_dir"
    export PYTHONPATH="$lib" ATBPTT_GIT_COMMIT="$commit" OMP_NUM_THREADS=1
    export ATBPTT_DATA="${ATBPTT_DATA:-$(cd .. && pwd)/shared/data}"
    echo "== $(date -u +%FT%TZ) start $experiment seed=$seed commit=$commit" >> "$sweep_dir/sweep.log"
    nohup setsid "$BIN/python" -m atbptt.cli -m "experiment=$experiment" "seed=$seed" threads=1 \
      hydra/launcher=joblib "hydra.launcher.n_jobs=$JOBS" progress=false \
      "hydra.sweep.dir=$sweep_dir" ${EXTRA_OVERRIDES:-} >> "$sweep_dir/sweep.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    echo "started $experiment seed=$seed (pid $!, commit ${commit:0:10}) -> $sweep_dir"
    ;;
  status)
    if running; then echo "running (pid $(cat "$pidfile"))"; else echo "not running"; fi
    for info in "$sweep_dir"/*/run.json; do
      [ -f "$info" ] || continue
      "$BIN/python" - "$info" <<'EOF'
import csv, json, sys
from pathlib import Path
info = Path(sys.argv[1]); meta = json.loads(info.read_text())
rows = list(csv.DictReader(open(info.parent / "metrics.csv"))) if (info.parent / "metrics.csv").exists() else []
last = rows[-1] if rows else {}
print(f"{info.parent.name:28s} {meta['status']:9s} epoch {last.get('epoch', '-'):>8s} "
      f"K {last.get('K', '-'):>4s} test ppl {last.get('test_ppl', '-')[:7]:>7s}")
EOF
    done
    ;;
  stop)
    if running; then kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null || kill -TERM "$(cat "$pidfile")"; echo "stopped"; else echo "not running"; fi
    ;;
  *) usage ;;
esac
