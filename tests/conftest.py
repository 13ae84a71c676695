"""Shared test helpers: one torch thread, tiny configs, the CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ATBPTT_DATA", REPO.parent / "shared" / "data"))

# a copy-task run that takes a second or two
TINY = ["dataset.train_length=400", "dataset.eval_length=100", "dataset.batch_size=8",
        "dataset.eval_batch_size=8", "model.hidden_size=8", "model.embedding_size=8",
        "method.window=20", "method.burn_in=5", "method.num_windows=4", "method.k_max=20",
        "K=5", "evals_per_epoch=2", "epochs=1", "progress=false"]


def run_cli(args, cwd: Path, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``atbptt-run ARGS`` in ``cwd`` with one thread."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "atbptt.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny():
    return list(TINY)
