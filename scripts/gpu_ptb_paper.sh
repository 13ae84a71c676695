#!/usr/bin/env bash
# A time-boxed ptb_paper grid on one CUDA GPU: fixed K in {10, 50, 100} and adaptive delta in
# {0.9, 0.5, 0.1} (LSTM 1x900, tied, dropout 0.2, the paper's initialization, the norm_sum
# stand-in and the authors' K update: 5 estimates every 15,000 steps from K0 = 100), run side
# by side as six processes sharing the GPU, each stopped after BUDGET seconds of training
# (default 300; the paper gives each run 3 h), evaluated twice an epoch and at its end, then
# aggregated (scripts/aggregate.py -> <out>/tables/ptb_paper/) with the paper's headline
# question answered (scripts/headline.py). Each K update computes its 5 estimates together
# (method.batch_estimates=true); the training step is CUDA-graphed where it can be (cuda.graphs
# null, the default; ATBPTT_GRID_OVERRIDES="cuda.graphs=false" trains eagerly).
#
#   here:    bash scripts/gpu_check.sh --prepare   # wheels for hydra/omegaconf -> .whl/, PTB -> .gpudata/
#   device:  run(command="ATBPTT_GIT_COMMIT=<sha> bash scripts/gpu_ptb_paper.sh 300",
#                carry=[".whl", ".gpudata"], timeout_s=600)
# (scripts/gpu_check.sh runs it after the tests and the benchmark, with the time left.)
#
# Environment: ATBPTT_GRID_OUT (default results/gpu/ptb_paper_sweep, or /tmp/ptb_paper_sweep
# packed into $OUT/ptb_paper_sweep.tar.gz when $OUT is set), ATBPTT_GRID_DEVICE (cuda),
# ATBPTT_GRID_OVERRIDES (extra Hydra overrides for every run), ATBPTT_GRID_STOP (seconds after
# which a run still going is stopped, default BUDGET + 120), PY (set: the environment is
# ready; unset: scripts/gpu_env.sh installs it). Checkpoints are removed from the run
# directories. Outside a git checkout run.json records ATBPTT_GIT_COMMIT, marked "(declared)".
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${1:-300}
OUTDIR=${ATBPTT_GRID_OUT:-results/gpu/ptb_paper_sweep}
[ -z "${ATBPTT_GRID_OUT:-}" ] && [ -n "${OUT:-}" ] && OUTDIR=/tmp/ptb_paper_sweep
DEVICE=${ATBPTT_GRID_DEVICE:-cuda}
mkdir -p "$OUTDIR"
[ -z "${PY:-}" ] && source scripts/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUTDIR/device.txt" 2>&1 \
  || echo "no GPU: device=$DEVICE" > "$OUTDIR/device.txt"
# shellcheck disable=SC2086  # the overrides are words
for setting in K10 K50 K100 delta0.9 delta0.5 delta0.1; do
  timeout "${ATBPTT_GRID_STOP:-$((BUDGET + 120))}" $PY -m atbptt.cli experiment=ptb_paper +setting=$setting seed=0 \
    device=$DEVICE max_time=$BUDGET evals_per_epoch=2 progress=false method.batch_estimates=true \
    ${ATBPTT_GRID_OVERRIDES:-} "hydra.run.dir=$OUTDIR/$setting" > "$OUTDIR/$setting.log" 2>&1 &
done
wait
rm -f "$OUTDIR"/*/checkpoint.pt "$OUTDIR"/*/run.lock
rm -rf "$OUTDIR"/*/snapshots
for log in "$OUTDIR"/*.log; do echo "== $log"; tail -n 2 "$log"; done
$PY scripts/aggregate.py --runs "$OUTDIR" --out "$OUTDIR/tables" --experiment ptb_paper
$PY scripts/headline.py --results "$OUTDIR/tables" --experiment ptb_paper \
  | tee "$OUTDIR/tables/headline.txt"
cat "$OUTDIR/tables/ptb_paper/summary.csv" 2>/dev/null
if [ -n "${OUT:-}" ] && [ -z "${ATBPTT_GRID_OUT:-}" ]; then
  tar czf "$OUT/ptb_paper_sweep.tar.gz" -C "$OUTDIR" .
fi
