"""scripts/aggregate.py on malformed run directories: each is skipped with one line naming it
and why, the others are aggregated; interrupted runs are counted; no pandas warnings."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_analysis import rows_of, write_run

ROOT = Path(__file__).resolve().parents[1]
AGGREGATE = ROOT / "scripts" / "aggregate.py"


def sound(run_dir: Path, seed: int, status: str = "finished") -> None:
    write_run(run_dir, {"experiment": "faults", "dataset": "copy", "method": "fixed", "K": 5,
                        "delta": 0.5, "seed": seed, "status": status},
              rows_of([3.0, 2.0], [3.1, 2.1], [5, 5]))


def aggregate(runs: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error::FutureWarning", str(AGGREGATE),
                           "--runs", str(runs), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=runs.parent)


DAMAGES = {
    "non-utf8-metrics": ("metrics.csv", lambda b: b[:40] + b"\xff\xfe" + b[40:], "not UTF-8"),
    "extra-field": ("metrics.csv", lambda b: b.rstrip(b"\n") + b",1,2\n", "cannot be read"),
    "not-a-metrics-file": ("metrics.csv", lambda b: b"a,b\n1,2\n", "no 'eval' column"),
    "cut-run-json": ("run.json", lambda b: b[:len(b) // 2], "unreadable run.json"),
    "run-json-a-list": ("run.json", lambda b: b"[1, 2]", "unreadable run.json"),
    "non-utf8-run-json": ("run.json", lambda b: b"\xff" + b, "unreadable run.json"),
    "bad-yaml": (".hydra/config.yaml", lambda b: b"a: [\n", "config.yaml"),
    "yaml-a-list": (".hydra/config.yaml", lambda b: b"- 1\n- 2\n", "config.yaml"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_malformed_run_directory_is_skipped_with_one_line(tmp_path, damage):
    runs = tmp_path / "sweeps"
    sound(runs / "good", 0)
    sound(runs / "interrupted", 1, status="interrupted")
    sound(runs / "bad", 2)
    name, change, why = DAMAGES[damage]
    path = runs / "bad" / name
    path.write_bytes(change(path.read_bytes()))
    done = aggregate(runs, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    skipped = [l for l in done.stdout.splitlines() if l.startswith("skipping")]
    assert len(skipped) == 1 and "bad" in skipped[0] and why in skipped[0], done.stdout
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr
    summary = pd.read_csv(tmp_path / "out" / "faults" / "summary.csv")
    assert summary["n_seeds"].tolist() == [2]
    assert summary["n_finished"].tolist() == [1] and summary["n_interrupted"].tolist() == [1]


def test_a_run_without_a_finite_validation_value_raises_no_warning(tmp_path):
    """Its has_best is empty (was a pandas FutureWarning from fillna(False))."""
    runs = tmp_path / "sweeps"
    sound(runs / "good", 0)
    write_run(runs / "nan", {"experiment": "faults", "dataset": "copy", "method": "fixed",
                             "K": 5, "delta": 0.5, "seed": 1, "status": "diverged"},
              rows_of([float("nan")], [float("nan")], [5]))
    done = aggregate(runs, tmp_path / "out")
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    summary = pd.read_csv(tmp_path / "out" / "faults" / "summary.csv")
    assert summary["n_in_mean"].tolist() == [1] and summary["n_diverged"].tolist() == [1]


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cut=st.integers(0, 2000), junk=st.binary(min_size=1, max_size=8),
       where=st.sampled_from(["metrics.csv", "run.json", ".hydra/config.yaml",
                              "profiles/eval_00001.csv"]))
def test_any_damaged_file_skips_its_run_or_is_read(tmp_path_factory, cut, junk, where):
    """Random bytes spliced into one file of one run: aggregate.py never fails; the run is
    aggregated or skipped with one line; the sound run is always aggregated."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import aggregate as agg
    import experiment_csv

    runs = tmp_path_factory.mktemp("h") / "sweeps"
    sound(runs / "good", 0)
    sound(runs / "bad", 1)
    path = runs / "bad" / where
    data = path.read_bytes()
    path.write_bytes(data[:cut] + junk + data[cut:])
    experiments, _ = agg.collect([runs], None)
    metas, frame = experiments["faults"] if "faults" in experiments else ([], None)
    assert "good" in {Path(m["run_dir"]).name for m in metas}
    for name, (metas, frame) in experiments.items():
        experiment_csv.summarize(frame)
