"""scripts/aggregate.py --add: runs merged into an experiment's committed tables give the
tables that aggregating every run directory at once gives; a run in both is replaced."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from test_analysis import rows_of, write_run

ROOT = Path(__file__).resolve().parents[1]
AGGREGATE = ROOT / "scripts" / "aggregate.py"
IDENT = {"experiment": "addx", "dataset": "copy", "delta": 0.5}


def aggregate(out: Path, *runs: Path, add: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error::FutureWarning", str(AGGREGATE),
                           "--runs", *map(str, runs), "--out", str(out),
                           *(["--add"] if add else [])],
                          capture_output=True, text=True, timeout=300, cwd=out.parent)


def run(root: Path, name: str, seed: int, valid: list[float], commit: str, **meta) -> None:
    method = meta.pop("method", "fixed")
    write_run(root / name, {**IDENT, "method": method, "K": meta.pop("K", 10), "seed": seed,
                            "git_commit": commit, "start_time": f"2024-01-0{seed + 1}T00:00:00",
                            "end_time": f"2024-01-0{seed + 1}T01:00:00", **meta},
              rows_of(valid, [v + 0.1 for v in valid], [10] * len(valid)))


@pytest.fixture
def sweeps(tmp_path):
    """first: K=10 seed 0, δ=0.1 seed 0 and 1; later: K=10 seed 1, and δ=0.1 seed 1 again."""
    first, later = tmp_path / "first", tmp_path / "later"
    run(first, "K10s0", 0, [6.0, 2.0, 1.5], "aaa1111")
    run(first, "d01s0", 0, [6.0, 3.0, 2.5], "aaa1111", method="adaptive", K=15, delta=0.1)
    run(first, "d01s1", 1, [6.0, 3.5, 2.9], "aaa1111", method="adaptive", K=15, delta=0.1)
    run(later, "K10s1", 1, [6.0, 1.8, 1.2], "bbb2222")
    run(later, "d01s1", 1, [6.0, 2.2, 2.0], "bbb2222", method="adaptive", K=15, delta=0.1)
    return tmp_path, first, later


def table(folder: Path, name: str) -> pd.DataFrame:
    frame = pd.read_csv(folder / name)
    keys = [c for c in ("setting", "seed", "eval", "lag") if c in frame]
    return frame.drop(columns=[c for c in ("run_dir",) if c in frame]).sort_values(
        keys, kind="stable").reset_index(drop=True)


def test_added_runs_give_the_tables_of_one_aggregation(sweeps):
    tmp, first, later = sweeps
    merged, direct = tmp / "merged", tmp / "direct"
    assert aggregate(merged, first).returncode == 0
    result = aggregate(merged, later, add=True)
    assert result.returncode == 0, result.stderr
    # aggregating everything at once: the later δ=0.1 seed 1 is the newer duplicate
    both = tmp / "both"
    shutil.copytree(first, both / "first")
    shutil.rmtree(both / "first" / "d01s1")
    shutil.copytree(later, both / "later")
    assert aggregate(direct, both).returncode == 0
    for name in ("runs.csv", "summary.csv", "profiles.csv"):
        pd.testing.assert_frame_equal(table(merged / "addx", name), table(direct / "addx", name),
                                      check_like=True)
    summary = table(merged / "addx", "summary.csv").set_index("setting")
    assert summary.loc["K=10", "n_seeds"] == 2 and summary.loc["δ=0.1", "n_seeds"] == 2
    # the replaced run is gone: δ=0.1 seed 1 has the later run's best valid 2.0
    runs = table(merged / "addx", "runs.csv")
    replaced = runs[(runs["setting"] == "δ=0.1") & (runs["seed"] == 1)]
    assert replaced["valid_ppl"].min() == 2.0 and len(replaced) == 3
    record = json.loads((merged / "addx" / "provenance.json").read_text())
    assert record["git_commits"] == ["aaa1111", "bbb2222"]
    assert record["n_runs"] == 4 and record["runs_per_status"] == {"finished": 4}
    assert record["first_start"] == "2024-01-01T00:00:00"
    assert record["last_end"] == "2024-01-02T01:00:00"
    assert record["train_time_hours"] == pytest.approx(4 * 20.0 / 3600, abs=1e-4)
    assert record["train_core_hours"] == record["train_time_hours"]
    assert any("replaced committed run 'δ=0.1' seed 1" in n for n in record["duplicates_dropped"])


def test_add_without_committed_tables_writes_the_new_runs_alone(sweeps):
    tmp, first, _ = sweeps
    plain, added = tmp / "plain", tmp / "added"
    assert aggregate(plain, first).returncode == 0
    assert aggregate(added, first, add=True).returncode == 0
    for name in ("runs.csv", "summary.csv", "profiles.csv", "provenance.json"):
        assert (plain / "addx" / name).read_bytes() == (added / "addx" / name).read_bytes()


def test_add_onto_unreadable_tables_is_one_line_and_writes_nothing(sweeps):
    tmp, first, later = sweeps
    out = tmp / "out"
    assert aggregate(out, first).returncode == 0
    (out / "addx" / "provenance.json").write_text("{not json")
    before = (out / "addx" / "runs.csv").read_bytes()
    result = aggregate(out, later, add=True)
    assert result.returncode != 0
    assert "cannot read the committed tables" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (out / "addx" / "runs.csv").read_bytes() == before
