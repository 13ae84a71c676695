#!/usr/bin/env bash
# One prepared GPU check (at most ~8 minutes) for a machine with a CUDA GPU.
#
#   here:    bash scripts/gpu_check.sh --prepare   # wheels for hydra/omegaconf -> .whl/, PTB -> .gpudata/
#   device:  run(command="ATBPTT_GIT_COMMIT=<sha> bash scripts/gpu_check.sh", carry=[".whl", ".gpudata"], timeout_s=540)
#
# On the GPU machine (its python3 already holds torch with CUDA) it installs atbptt and the
# carried wheels into /tmp/site, then:
#   1. the CUDA tests (tests/test_cuda.py: cuDNN gradients and profiles against the CPU, a CLI
#      run, and a run resumed CPU -> CUDA -> CPU from its checkpoints) plus the exact TBPTT and
#      estimator tests, on CUDA,
#   2. 45 s of ptb_paper training (LSTM 1x900, cuDNN) for fixed K=100 and adaptive delta=0.1,
#   3. the benchmark table on CUDA,
# writing what it measured, with the device name, under results/gpu/ (when $OUT is set: packed
# into $OUT/gpu_check.tar.gz, with device.txt, tests.txt and bench.txt beside it).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qxF "/.whl/" "$exclude" || echo "/.whl/" >> "$exclude"
  grep -qxF "/.gpudata/" "$exclude" || echo "/.gpudata/" >> "$exclude"
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
  ls .whl .gpudata; exit 0
fi
# $OUT brings back at most 8 files: the runs are written to a scratch folder, then packed
OUTDIR=results/gpu
[ -n "${OUT:-}" ] && OUTDIR=/tmp/gpu_check
mkdir -p "$OUTDIR" results/gpu
source scripts/gpu_env.sh
export PYTHONPATH=$PYTHONPATH:$(pwd)/tests
{
  echo "date: $(date -u +%FT%TZ)"; echo "commit: ${ATBPTT_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$OUTDIR/device.txt" 2>&1
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_tbptt.py tests/test_adaptive.py tests/test_artbp.py tests/test_controller.py tests/test_models.py \
  > "$OUTDIR/tests.txt" 2>&1
for setting in K100 delta0.1; do
  timeout 90 $PY -m atbptt.cli experiment=ptb_paper +setting=$setting device=cuda max_time=45 \
    evals_per_epoch=20 epochs=1 hydra.run.dir="$OUTDIR/ptb_paper_$setting" > "$OUTDIR/ptb_paper_$setting.log" 2>&1
  rm -f "$OUTDIR/ptb_paper_$setting/checkpoint.pt"
done
timeout 120 $PY scripts/bench.py --device cuda > "$OUTDIR/bench.txt" 2>&1
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/gpu_check.tar.gz" -C "$OUTDIR" .
  cp "$OUTDIR"/device.txt "$OUTDIR"/tests.txt "$OUTDIR"/bench.txt "$OUT"/ 2>/dev/null
fi
cat "$OUTDIR/device.txt"; tail -n 3 "$OUTDIR/tests.txt"; tail -n 15 "$OUTDIR/bench.txt"
