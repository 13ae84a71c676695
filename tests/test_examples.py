"""examples/ptb_plain_loop.py: plain PyTorch on PTB with AdaptiveTruncation, tiny budget."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA

PTB = SHARED_DATA / "ptb"


@pytest.mark.skipif(not (PTB / "ptb.train.txt").exists(), reason="PTB not found ($ATBPTT_DATA)")
def test_ptb_plain_loop_example_trains_with_the_controller():
    args = ["--data", str(PTB), "--max-batches", "60", "--hidden", "32", "--emsize", "32",
            "--window", "40", "--num-windows", "16", "--k-min", "5", "--k-max", "40",
            "--reestimate-every", "100", "--log-interval", "10", "--max-eval-batches", "50"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(REPO / "examples" / "ptb_plain_loop.py"), *args],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    estimates = [tuple(map(float, m)) for m in re.findall(
        r"\| estimate +\d+ \| batch +(\d+) \| K +(\d+) \| delta_hat\(K\) (\S+) \| K_hat +(\d+)",
        res.stdout)]
    assert len(estimates) >= 2
    for _, K, delta_hat, K_hat in estimates:
        assert 5 <= K == K_hat <= 40
        assert delta_hat < 0.1 or K in (5, 40)  # K_hat(0.1), unless clamped
    logged = [tuple(map(int, m)) for m in re.findall(r"\| epoch +\d+ \| batch +(\d+) \| K +(\d+)",
                                                     res.stdout)]
    assert len(logged) == 6
    for batch, K in logged:  # the chunk's K is the latest estimate made before it (else K0)
        before = [e for e in estimates if e[0] < batch]
        assert K == (before[-1][1] if before else 35)
    end = re.search(r"\| end \| valid ppl +(\S+) \| test ppl +(\S+)", res.stdout)
    valid, test = float(end.group(1)), float(end.group(2))
    assert math.isfinite(valid) and valid < 3000 and test < 3000  # untrained: ~10,000
