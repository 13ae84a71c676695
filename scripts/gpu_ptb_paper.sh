#!/usr/bin/env bash
# A time-boxed ptb_paper sweep on one CUDA GPU: the preset's six fixed-K and adaptive-delta
# settings (K10 K50 K100 delta0.9 delta0.5 delta0.1; LSTM 1x900, tied, dropout 0.2, the paper's
# initialization and the norm_sum stand-in), run side by side as six processes sharing the GPU,
# each stopped after BUDGET seconds of training (default 300; the paper gives each run 3 h).
#
#   here:    bash scripts/gpu_check.sh --prepare   # wheels for hydra/omegaconf -> .whl/, PTB -> .gpudata/
#   device:  run(command="ATBPTT_GIT_COMMIT=<sha> bash scripts/gpu_ptb_paper.sh 300",
#                carry=[".whl", ".gpudata"], timeout_s=540)
#   then:    python scripts/aggregate.py --runs <unpacked folder> --out results --experiment ptb_paper
#
# The run directories (checkpoints removed) are written under results/gpu/ptb_paper_sweep/, or,
# when $OUT is set, packed into $OUT/ptb_paper_sweep.tar.gz. Outside a git checkout the commit
# recorded in run.json is ATBPTT_GIT_COMMIT, marked "(declared)".
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${1:-300}
OUTDIR=results/gpu/ptb_paper_sweep
[ -n "${OUT:-}" ] && OUTDIR=/tmp/ptb_paper_sweep
mkdir -p "$OUTDIR"
source scripts/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUTDIR/device.txt" 2>&1
for setting in K10 K50 K100 delta0.9 delta0.5 delta0.1; do
  timeout $((BUDGET + 200)) $PY -m atbptt.cli experiment=ptb_paper +setting=$setting seed=0 device=cuda \
    max_time=$BUDGET evals_per_epoch=2 progress=false \
    "hydra.run.dir=$OUTDIR/$setting" > "$OUTDIR/$setting.log" 2>&1 &
done
wait
rm -f "$OUTDIR"/*/checkpoint.pt "$OUTDIR"/*/run.lock
for log in "$OUTDIR"/*.log; do echo "== $log"; tail -n 2 "$log"; done
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/ptb_paper_sweep.tar.gz" -C "$OUTDIR" .
fi
