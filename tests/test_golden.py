"""Training results do not change unless meant to: tiny fixed-K, adaptive (both procedures) and
ARTBP runs reproduce the metrics.csv committed in tests/golden/ to the last digit (time
columns aside). Where the CPU differs from the one that wrote them (its name is in
tests/golden/hardware.json) the comparison allows float rounding (rtol 1e-6).

A change that is meant to change results rewrites them, and says so in its commit:
    python tests/test_golden.py --write
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
sys.path.insert(0, str(HERE))

from conftest import TINY, checked_config  # noqa: E402

RUNS = {
    "fixed": ["K=5"],
    "adaptive_synthetic": ["method=adaptive", "model.dropout=0.1", "method.reestimate_steps=30",
                           "method.audit=true"],
    "adaptive_lm_procedure": ["method=adaptive", "model.dropout=0.2", "model.num_layers=2",
                              "method.reestimate_steps=60", "method.num_estimates=3",
                              "method.average=k_hat", "method.lag0=state_entering_step",
                              "method.log_from=fresh", "method.log_estimates=2",
                              "method.audit=true", "delta=0.5"],
    "artbp": ["method=artbp", "method.artbp_draws=4"],
}
COMMON = ["device=cpu", "threads=1", "evals_per_epoch=4", "epochs=2"]


def run(name: str, out: Path) -> list[dict]:
    from atbptt.metrics import TIME_COLUMNS
    from atbptt.run import run as run_training

    assert run_training(checked_config(*TINY, *COMMON, *RUNS[name]), out) == "finished"
    with open(out / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)]


def same_cpu() -> bool:
    from atbptt.metrics import hardware

    recorded = json.loads((GOLDEN / "hardware.json").read_text())
    return hardware()["cpu"] == recorded["cpu"]


def close(a: str, b: str) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return a == b
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12)


@pytest.mark.usefixtures("torch_state")
@pytest.mark.parametrize("name", sorted(RUNS))
def test_tiny_runs_reproduce_their_committed_metrics(name, tmp_path):
    with open(GOLDEN / f"{name}.csv") as f:
        expected = list(csv.DictReader(f))
    got = run(name, tmp_path / name)
    assert [r["eval"] for r in got] == [r["eval"] for r in expected]
    if same_cpu():
        assert got == expected
    else:
        for g, e in zip(got, expected):
            assert g.keys() == e.keys() and all(close(g[k], e[k]) for k in g), (g, e)


def write() -> None:
    import tempfile

    import torch

    from atbptt.metrics import hardware

    torch.set_num_threads(1)
    GOLDEN.mkdir(exist_ok=True)
    for name in sorted(RUNS):
        with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[]):
            rows = run(name, Path(tmp) / name)
        with open(GOLDEN / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {GOLDEN / name}.csv ({len(rows)} rows)")
    (GOLDEN / "hardware.json").write_text(json.dumps({"cpu": hardware()["cpu"],
                                                      "torch": torch.__version__}) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_golden.py --write")
    write()
