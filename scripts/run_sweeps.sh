#!/usr/bin/env bash
# Run the CPU-scale reproduction sweeps one after another, two jobs at a time (joblib, one
# torch thread each), then aggregate. Interrupted? Re-run with SWEEP_DIR_<name> pointing at
# the old sweep folder to resume its unfinished runs (finished runs are skipped).
#   bash scripts/run_sweeps.sh [experiment ...]      (default: all CPU-scale presets)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
JOBS=${JOBS:-2}
export ATBPTT_DATA="${ATBPTT_DATA:-$(cd .. && pwd)/shared/data}"
experiments=("$@")
[ ${#experiments[@]} -eq 0 ] && experiments=(copy_fixed copy_variable linear var ptb_cpu wikitext2_cpu)
for exp in "${experiments[@]}"; do
  var="SWEEP_DIR_${exp}"
  dir=${!var:-results/sweeps/$exp/$(date -u +%Y-%m-%d_%H-%M-%S)}
  echo "== $(date -u +%FT%TZ) $exp -> $dir"
  $BIN/atbptt-run -m "experiment=$exp" hydra/launcher=joblib "hydra.launcher.n_jobs=$JOBS" \
    progress=false "hydra.sweep.dir=$dir" || echo "!! sweep $exp exited with $?"
done
echo "== $(date -u +%FT%TZ) done"
