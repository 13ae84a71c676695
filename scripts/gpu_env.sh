# Sourced by scripts/gpu_check.sh and scripts/gpu_ptb_paper.sh on the GPU machine, from the
# repository root: installs the carried wheels (.whl/) and atbptt into /tmp/site, points
# ATBPTT_DATA at the carried corpora (.gpudata/) and sets PY. The machine's python3 already
# holds torch with CUDA, pandas, matplotlib, hypothesis and PyYAML. Outside a git checkout
# run.json records ATBPTT_GIT_COMMIT (set it in the device command), marked "(declared)".
# Sourced a second time in the same shell (gpu_check.sh runs gpu_ptb_paper.sh) it does nothing.
if [ -z "${ATBPTT_GPU_ENV:-}" ]; then
  export ATBPTT_DATA="${ATBPTT_DATA:-$(pwd)/.gpudata}" PYTHONUNBUFFERED=1
  PY=python3
  if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  fi
  $PY -m pip install -q --no-deps --no-build-isolation --target /tmp/site . >/dev/null 2>&1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} ATBPTT_GPU_ENV=1 PY
fi
