#!/usr/bin/env bash
# One prepared GPU check, inside one device call of at most 10 minutes (default: ends by 570 s).
#
#   here:    bash scripts/gpu_check.sh --prepare   # wheels for hydra/omegaconf -> .whl/, PTB -> .gpudata/
#   device:  run(command="ATBPTT_GIT_COMMIT=<sha> bash scripts/gpu_check.sh", carry=[".whl", ".gpudata"], timeout_s=600)
#   here:    bash scripts/gpu_check.sh --unpack <files_at>   # -> results/gpu/ (see below)
#   dry run: bash scripts/gpu_check.sh --dry         # the same phases on the CPU at toy sizes
#
# On the GPU machine (its python3 already holds torch with CUDA) it installs atbptt and the
# carried wheels into /tmp/site, then, each phase time-boxed:
#   1. tests (<= 100 s): tests/test_cuda.py (cuDNN against the CPU, CUDA graphs against eager
#      steps and without a host sync, bf16, the fused ARTBP backward, estimates together, a CLI
#      run with graphs, a resume across devices) and the exact TBPTT, ARTBP, estimator and
#      graph-logic tests, on CUDA;
#   2. the benchmark tables on CUDA (<= 100 s): scripts/bench.py --device cuda (lean overlap,
#      ARTBP against fixed K, peak memory, CUDA graphs against eager steps at LSTM 1x200 and
#      1x900 with and without bf16), then scripts/bench_estimator.py (a K update's estimates
#      together vs apart, and the estimator's share of train_time, at both sizes);
#   3. the ptb_paper grid (scripts/gpu_ptb_paper.sh): K in {10, 50, 100} and delta in
#      {0.9, 0.5, 0.1}, six processes sharing the GPU, each training for the time that is left
#      less 170 s (at most ATBPTT_GRID_BUDGET, default 300 s) and stopped 45 s before the
#      deadline whatever it is doing, evaluated, then aggregated (scripts/aggregate.py) and the
#      headline computed (scripts/headline.py). The grid uses CUDA graphs only if their tests
#      passed (else cuda.graphs=false) and computes each K update's 5 estimates together.
# $OUT brings back at most 8 files: gpu_check.tar.gz (everything, for --unpack) and, to read
# at once, device.txt, tests.txt, bench.txt, grid.txt (headline and summary) and timing.txt.
# --unpack <dir> writes results/gpu/check_<date>/ (device, tests, bench, timing) and the grid's
# run directories and tables under results/gpu/ptb_paper_grid_<date>/.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
DEADLINE=${ATBPTT_GPU_SECONDS:-570}  # seconds after START by which everything is packed
MODE=gpu
case "${1:-}" in
  --prepare)
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qxF "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >> "$exclude"
    grep -qxF "/.gpudata/" "$exclude" 2>/dev/null || echo "/.gpudata/" >> "$exclude"
    mkdir -p .whl .gpudata && cp -r "${ATBPTT_DATA:-../shared/data}/ptb" .gpudata/
    # PyYAML, pandas, matplotlib, hypothesis and torch are already in the GPU image (python3.12)
    for pkg in hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3; do
      python3 -m pip download -q --no-deps --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .whl "$pkg" || python3 -m pip download -q --no-deps -d .whl "$pkg"
    done
    # a package published only as an sdist (antlr4-python3-runtime) becomes a wheel here
    for sdist in .whl/*.tar.gz; do
      [ -e "$sdist" ] && python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl "$sdist" && rm -f "$sdist"
    done
    ls .whl .gpudata; exit 0 ;;
  --unpack)
    src=${2:?"--unpack needs the folder that holds gpu_check.tar.gz"}
    day=$(date -u +%Y-%m-%d)
    tmp=$(mktemp -d) && tar xzf "$src/gpu_check.tar.gz" -C "$tmp" || exit 1
    mkdir -p "results/gpu/check_$day" "results/gpu/ptb_paper_grid_$day"
    cp "$tmp"/*.txt "results/gpu/check_$day/"
    cp -r "$tmp"/grid/. "results/gpu/ptb_paper_grid_$day/"
    rm -rf "$tmp"; ls "results/gpu/check_$day" "results/gpu/ptb_paper_grid_$day"; exit 0 ;;
  --dry) MODE=dry ;;
esac
left() { echo $((DEADLINE - ($(date +%s) - START))); }
stamp() { echo "$(($(date +%s) - START)) s: $*" >> "$OUTDIR/timing.txt"; }

OUTDIR=results/gpu/check_scratch
[ -n "${OUT:-}" ] && OUTDIR=/tmp/gpu_check
[ "$MODE" = dry ] && OUTDIR=${ATBPTT_DRY_DIR:-/tmp/gpu_check_dry}
rm -rf "$OUTDIR" && mkdir -p "$OUTDIR/grid"
if [ "$MODE" = gpu ]; then
  source scripts/gpu_env.sh
  DEVICE=cuda
else
  PY=${PY:-.venv/bin/python}
  export ATBPTT_DATA=${ATBPTT_DATA:-../shared/data} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
  DEVICE=cpu
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)/tests
stamp "start ($MODE)"
{
  echo "date: $(date -u +%FT%TZ)"; echo "commit: ${ATBPTT_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU ($MODE)"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else '-')"
} > "$OUTDIR/device.txt" 2>&1

# 1. tests
TESTS="tests/test_cuda.py tests/test_graphs.py tests/test_artbp_fused.py tests/test_batched.py \
  tests/test_artbp.py tests/test_tbptt.py tests/test_adaptive.py tests/test_controller.py tests/test_models.py"
[ "$MODE" = dry ] && TESTS="tests/test_cuda.py tests/test_graphs.py tests/test_artbp_fused.py tests/test_batched.py"
timeout 100 $PY -m pytest -q -p no:cacheprovider -rs $TESTS > "$OUTDIR/tests.txt" 2>&1
echo "exit status $?" >> "$OUTDIR/tests.txt"
GRAPHS=null
grep -Eq "FAILED tests/test_cuda.py::test_(cuda_graph|cli_runs_with_cuda_graphs)" "$OUTDIR/tests.txt" && GRAPHS=false
stamp "tests done; grid uses cuda.graphs=$GRAPHS"

# 2. benchmark tables (each prints its table at its end: two calls, two time boxes)
if [ "$MODE" = gpu ]; then
  timeout 65 $PY scripts/bench.py --device cuda --skip-profile --skip-estimator > "$OUTDIR/bench.txt" 2>&1
  echo "exit status $?" >> "$OUTDIR/bench.txt"
  timeout 35 $PY scripts/bench_estimator.py --device cuda --hidden 200 900 --rounds 2 >> "$OUTDIR/bench.txt" 2>&1
else
  timeout 300 $PY scripts/bench.py --device cpu --quick --skip-profile --skip-estimator > "$OUTDIR/bench.txt" 2>&1
  echo "exit status $?" >> "$OUTDIR/bench.txt"
  timeout 120 $PY scripts/bench_estimator.py --device cpu --quick >> "$OUTDIR/bench.txt" 2>&1
fi
echo "exit status $?" >> "$OUTDIR/bench.txt"
stamp "bench done"

# 3. the ptb_paper grid: training for what is left less startup, evaluations, aggregation and
# packing (170 s), at most ATBPTT_GRID_BUDGET (300 s); every run stopped 45 s before the deadline
STOP=$(( $(left) - 45 ))
if [ "$MODE" = gpu ]; then
  BUDGET=$(( $(left) - 170 )); MAX=${ATBPTT_GRID_BUDGET:-300}
  [ "$BUDGET" -gt "$MAX" ] && BUDGET=$MAX
  EXTRA=""
else  # toy sizes on the CPU: the same commands, seconds of training
  BUDGET=8; STOP=400
  EXTRA="model.hidden_size=16 model.embedding_size=16 dataset.batch_size=4 dataset.eval_batch_size=4 \
    method.window=30 method.burn_in=3 method.num_windows=4 method.k_max=30 method.k_min=2 \
    method.reestimate_steps=200 method.log_estimates=1 epochs=0.002 evals_per_epoch=1000"
fi
stamp "grid budget $BUDGET s"
if [ "$BUDGET" -ge 5 ]; then
  ATBPTT_GRID_DEVICE=$DEVICE ATBPTT_GRID_OUT="$OUTDIR/grid" ATBPTT_GRID_STOP=$STOP \
    ATBPTT_GRID_OVERRIDES="cuda.graphs=$GRAPHS $EXTRA" PY=$PY \
    bash scripts/gpu_ptb_paper.sh "$BUDGET" > "$OUTDIR/grid.txt" 2>&1
else
  echo "no time left for the grid ($BUDGET s)" > "$OUTDIR/grid.txt"
fi
stamp "grid done"

stamp "packing"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/gpu_check.tar.gz" -C "$OUTDIR" .
  cp "$OUTDIR"/device.txt "$OUTDIR"/tests.txt "$OUTDIR"/bench.txt "$OUTDIR"/grid.txt "$OUTDIR"/timing.txt "$OUT"/ 2>/dev/null
fi
cat "$OUTDIR/device.txt"; tail -n 4 "$OUTDIR/tests.txt"; tail -n 30 "$OUTDIR/bench.txt"; tail -n 25 "$OUTDIR/grid.txt"
cat "$OUTDIR/timing.txt"
