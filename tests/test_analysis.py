"""scripts/aggregate.py and scripts/figures.py on fake run directories.

The fake runs are written by hand in the training output format (run.json, .hydra/config.yaml,
metrics.csv, profiles/eval_NNNNN.csv), so these tests never need torch or the training code.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "scripts" / "aggregate.py", ROOT / "scripts" / "figures.py"]
# the modules the two scripts import from beside them
HELPERS = [ROOT / "scripts" / f"{name}.py" for name in
           ("analysis_common", "run_dirs", "experiment_csv", "committed_tables",
            "figure_panels", "markdown_tables")]
METRICS = ["eval", "epoch", "step", "tokens", "train_time", "wall_time", "estimation_time",
           "train_loss", "valid_loss", "test_loss", "valid_ppl", "test_ppl", "K", "lr",
           "beta_hat", "delta_hat", "K_hat_1.0", "K_hat_0.9", "K_hat_0.5", "K_hat_0.1",
           "true_rel_bias"]
ARTBP_METRICS = [*METRICS, "trunc_mean", "trunc_max", "grad_rel_var"]
NAN = float("nan")


# ----------------------------------------------------------------------------- fake runs
def write_run(run_dir: Path, meta: dict, rows: list[dict] | None, config: dict | None = None,
              task: str = "classification", columns: list[str] = METRICS) -> None:
    """One run directory; rows give valid/test (ppl or loss), K, beta_hat, delta_hat, and
    any other column in ``extra``."""
    run_dir.mkdir(parents=True)
    base = {"status": "finished", "message": "", "task": task, "vocab_size": 6,
            "tokens": {"train": 256000, "valid": 64000, "test": 64000}, "num_params": 1234,
            "device": "cpu", "device_name": "fake cpu", "torch_version": "2.13.0",
            "git_commit": "abc1234", "hostname": "box", "cpu": "fake cpu", "threads": 1,
            "epochs_budget": 3.0, "max_time": None, "start_time": "2024-01-01T00:00:00",
            "end_time": "2024-01-01T00:01:00", "true_rho": None,
            "scale": "cpu-scale: LSTM 2x50"}
    (run_dir / "run.json").write_text(json.dumps({**base, **meta}))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or {}))
    if rows is None:
        return
    table = []
    for i, row in enumerate(rows):
        valid, test = row["valid"], row["test"]
        ppl = task == "classification"
        table.append({
            "eval": i, "epoch": float(i), "step": 100 * i, "tokens": 25600 * i,
            "train_time": 10.0 * i, "wall_time": 12.0 * i, "estimation_time": 1.0 * i,
            "train_loss": math.log(valid) if ppl else valid,
            "valid_loss": math.log(valid) if ppl else valid,
            "test_loss": math.log(test) if ppl else test,
            "valid_ppl": valid if ppl else "", "test_ppl": test if ppl else "",
            "K": row["K"], "lr": 1.0, "beta_hat": row.get("beta", 0.8),
            "delta_hat": row.get("delta_hat", 0.3), "K_hat_1.0": 5, "K_hat_0.9": 6,
            "K_hat_0.5": 9, "K_hat_0.1": 20, "true_rel_bias": "", **row.get("extra", {})})
    extra = [c for c in table[0] if c not in columns] if table else []
    pd.DataFrame(table, columns=columns + extra).to_csv(run_dir / "metrics.csv", index=False)
    (run_dir / "profiles").mkdir()
    for i in (0, len(rows) - 1):  # profiles at the first and the last evaluation
        beta = rows[i].get("beta", 0.8)
        lags = np.arange(20)
        phi = (1.0 + i) * beta ** lags
        pd.DataFrame({"lag": lags, "phi": phi, "cum": np.cumsum(phi),
                      "tail": np.where(lags >= 16, phi[16] * beta ** (lags - 16), np.nan),
                      "beta_hat": beta, "tau": 16}).to_csv(
            run_dir / "profiles" / f"eval_{i:05d}.csv", index=False)


def rows_of(valid, test, K, beta=0.8):
    return [{"valid": v, "test": t, "K": k, "beta": beta} for v, t, k in zip(valid, test, K)]


def make_sweeps(tmp: Path) -> None:
    """copy: K=10 x 2 seeds, a diverged δ=0.1, a failed K=20, a duplicate; linear: 2 runs."""
    copy = tmp / "sweeps" / "copy" / "2024-01-01_00-00-00"
    ident = {"experiment": "copy", "dataset": "copy", "delta": 0.5}
    write_run(copy / "K=10,seed=1", {**ident, "method": "fixed", "K": 10, "seed": 1},
              rows_of([6.0, 2.0, 1.5, 1.6], [6.1, 2.1, 1.4, 1.3], [10] * 4))
    write_run(copy / "K=10,seed=2", {**ident, "method": "fixed", "K": 10, "seed": 2},
              rows_of([6.0, 1.8, 1.7, 1.2], [6.0, 1.9, 1.6, 1.25], [10] * 4))
    write_run(copy / "delta=0.1,seed=1",
              {**ident, "method": "adaptive", "K": 15, "delta": 0.1, "seed": 1,
               "status": "diverged", "message": "loss is nan"},
              rows_of([6.0, 3.0, NAN], [6.2, 3.1, NAN], [15, 12, 20]))
    write_run(copy / "K=20,seed=1", {**ident, "method": "fixed", "K": 20, "seed": 1,
                                     "status": "failed", "message": "out of memory"}, None)
    # a newer duplicate of K=10 seed 1 that failed: the finished run must be kept
    later = tmp / "sweeps" / "copy" / "2024-01-02_00-00-00"
    write_run(later / "K=10,seed=1", {**ident, "method": "fixed", "K": 10, "seed": 1,
                                      "status": "failed", "start_time": "2024-01-02T00:00:00"},
              rows_of([6.0, 9.0], [6.0, 9.0], [10, 10]))
    paper = tmp / "sweeps" / "copy_paper" / "2024-01-01_00-00-00"
    floor = {split: {"undetermined_share": share, "undetermined_entropy": 1.0,
                     "ppl_floor": math.exp(share)}
             for split, share in (("train", 0.01), ("valid", 0.1), ("test", 0.2))}
    audited = rows_of([6.0, 2.0, 1.5], [6.0, 2.0, 1.5], [10] * 3)
    for row, (true, grad, norm, k_grad, k_norm) in zip(audited, [(0.1, 0.5, 0.05, 40, 12),
                                                                 (0.2, 0.4, 0.3, 30, 10),
                                                                 (0.3, 0.2, 0.1, 20, 10)]):
        row["extra"] = {"true_rel_bias": true, "delta_hat_grad": grad, "delta_hat_norm_sum": norm,
                        "K_hat_0.5_grad": k_grad, "K_hat_0.5_norm_sum": k_norm}
    write_run(paper / "K=10,seed=0", {"experiment": "copy_paper", "dataset": "copy_paper",
                                      "method": "fixed", "K": 10, "delta": 0.5, "seed": 0,
                                      "init": "paper", "grad_norm_bound": "grad",
                                      "ppl_floor": floor}, audited)
    linear = tmp / "sweeps" / "linear" / "2024-01-01_00-00-00"
    lin = {"experiment": "linear", "dataset": "linear", "true_rho": 0.9}
    write_run(linear / "K=5,seed=0", {**lin, "method": "fixed", "K": 5, "delta": 0.5, "seed": 0},
              rows_of([1.0, 0.5, 0.4], [1.1, 0.55, 0.45], [5] * 3, beta=0.88), task="regression")
    # identifiers only in .hydra/config.yaml (the fallback)
    write_run(linear / "delta=0.5,seed=0", {"experiment": "linear", "method": "adaptive"},
              rows_of([1.0, 0.6, 0.3], [1.0, 0.65, 0.35], [15, 9, 8], beta=0.9),
              config={"experiment": "linear", "K": 15, "delta": 0.5, "seed": 0, "epochs": 3,
                      "dataset": {"name": "linear", "rho": 0.9}, "method": {"name": "adaptive"}},
              task="regression")


def artbp_rows(valid, variance, lengths, K=10):
    """ARTBP evaluations: K (the mean length), realised mean and max lengths, variance."""
    return [{"valid": v, "test": v, "K": K, "extra": {
        "trunc_mean": "" if i == 0 else mean, "trunc_max": "" if i == 0 else top,
        "grad_rel_var": var}}
        for i, (v, var, (mean, top)) in enumerate(zip(valid, variance, lengths))]


def make_mixed_sweep(tmp: Path) -> None:
    """The three families on one experiment: fixed K=10, adaptive δ=0.5, ARTBP c=1/10 (2 seeds),
    ARTBP with the poly schedule (parameters from config.yaml only) and ARTBP c=1/20."""
    sweep = tmp / "sweeps" / "mixed" / "2024-01-01_00-00-00"
    ident = {"experiment": "mixed", "dataset": "copy", "delta": 0.5}
    constant = {"schedule": "constant", "mean_length": 10.0, "c": 0.1, "alpha": None, "stride": 1,
                "max_length": None, "clip_lr_K": 10.0, "draws": 16}
    write_run(sweep / "K10", {**ident, "method": "fixed", "K": 10, "seed": 0},
              rows_of([6.0, 2.0, 1.5], [6.0, 2.0, 1.4], [10] * 3), columns=ARTBP_METRICS)
    write_run(sweep / "delta0.5", {**ident, "method": "adaptive", "K": 15, "seed": 0},
              rows_of([6.0, 1.9, 1.6], [6.0, 1.9, 1.5], [15, 12, 11]), columns=ARTBP_METRICS)
    for seed, variance in ((0, [0.1, 0.3, 0.5]), (1, [0.1, 0.5, 0.9])):
        write_run(sweep / f"artbp10,seed={seed}",
                  {**ident, "method": "artbp", "K": 10, "seed": seed, "artbp": constant},
                  artbp_rows([6.0, 1.8, 1.3 + 0.1 * seed], variance,
                             [(0, 0), (9.5, 41), (10.5, 57)]),
                  columns=ARTBP_METRICS)
    write_run(sweep / "artbp10poly", {**ident, "method": "artbp", "K": 10, "seed": 0},
              artbp_rows([6.0, 2.2, 1.7], [0.2, 0.2, 0.2], [(0, 0), (10.0, 300), (9.0, 120)]),
              config={"method": {"name": "artbp", "artbp_schedule": "poly", "artbp_alpha": 4.0,
                                 "artbp_stride": 1}}, columns=ARTBP_METRICS)
    write_run(sweep / "artbp20", {**ident, "method": "artbp", "K": 20, "seed": 0,
                                  "artbp": {**constant, "mean_length": 20.0, "c": 0.05}},
              artbp_rows([6.0, 2.5, 2.0], [1.0, 2.0, 3.0], [(0, 0), (19.0, 90), (21.0, 99)], K=20),
              columns=ARTBP_METRICS)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Fake sweeps, then both scripts run on them (with torch and atbptt made unimportable)."""
    tmp = tmp_path_factory.mktemp("analysis")
    make_sweeps(tmp)
    make_mixed_sweep(tmp)
    poison = tmp / "poison"  # importing either name fails the scripts
    (poison / "atbptt").mkdir(parents=True)
    (poison / "torch.py").write_text("raise ImportError('analysis must not import torch')\n")
    (poison / "atbptt" / "__init__.py").write_text("raise ImportError('no atbptt here')\n")
    env = {**os.environ, "PYTHONPATH": str(poison), "MPLBACKEND": "Agg"}
    results = tmp / "results"
    logs = []
    for command in ([SCRIPTS[0], "--runs", tmp / "sweeps", "--out", results],
                    [SCRIPTS[1], "--results", results]):
        done = subprocess.run([sys.executable, *map(str, command)], capture_output=True,
                              text=True, env=env, cwd=tmp, timeout=600)
        assert done.returncode == 0, done.stderr
        logs.append(done.stdout)
    return results, logs


def read(results: Path, experiment: str, name: str) -> pd.DataFrame:
    return pd.read_csv(results / experiment / name)


# ----------------------------------------------------------------------------- aggregate
def test_runs_csv_columns_and_rows(outputs):
    results, _ = outputs
    runs = read(results, "copy", "runs.csv")
    needed = ["experiment", "dataset", "method", "K", "delta", "seed", "setting", "status",
              "epoch", "step", "train_time", "wall_time", "estimation_time", "train_loss",
              "valid_loss", "test_loss", "valid_ppl", "test_ppl", "K_in_use", "delta_hat",
              "beta_hat", "K_hat_1.0", "K_hat_0.9", "K_hat_0.5", "K_hat_0.1",
              "true_rel_bias", "true_rho"]
    assert not set(needed) - set(runs.columns)
    # 4 + 4 evals for K=10, 3 for the diverged run, 1 empty row for the failed run
    assert len(runs) == 12
    assert runs.groupby("setting").size().to_dict() == {"K=10": 8, "K=20": 1, "δ=0.1": 3}
    assert set(runs["status"]) == {"finished", "diverged", "failed"}
    diverged = runs[runs["status"] == "diverged"]
    assert diverged["valid_ppl"].isna().iloc[-1] and list(diverged["K_in_use"]) == [15, 12, 20]


def test_duplicate_keeps_the_finished_run(outputs):
    results, logs = outputs
    runs = read(results, "copy", "runs.csv")
    kept = runs[(runs["setting"] == "K=10") & (runs["seed"] == 1)]
    assert list(kept["status"].unique()) == ["finished"] and len(kept) == 4
    assert "duplicate" in logs[0]
    provenance = json.loads((results / "copy" / "provenance.json").read_text())
    assert len(provenance["duplicates_dropped"]) == 1


def test_summary_by_hand(outputs):
    results, _ = outputs
    summary = read(results, "copy", "summary.csv").set_index("setting")
    assert list(summary.index) == ["K=10", "K=20", "δ=0.1"]  # fixed by K, then adaptive
    fixed = summary.loc["K=10"]
    # seed 1: best valid 1.5 (epoch 2, test 1.4); seed 2: best valid 1.2 (epoch 3, test 1.25)
    assert fixed["n_seeds"] == 2 and fixed["n_diverged"] == 0
    assert fixed["best_valid_ppl_mean"] == pytest.approx(1.35)
    assert fixed["best_valid_ppl_sd"] == pytest.approx(np.std([1.5, 1.2], ddof=1))
    assert fixed["test_ppl_at_best_mean"] == pytest.approx(1.325)
    assert fixed["test_ppl_at_best_sd"] == pytest.approx(np.std([1.4, 1.25], ddof=1))
    assert fixed["epoch_at_best_mean"] == pytest.approx(2.5)
    assert fixed["train_time_at_best_mean"] == pytest.approx(25.0)
    assert fixed["final_K_mean"] == 10 and fixed["beta_hat_mean"] == pytest.approx(0.8)
    adaptive = summary.loc["δ=0.1"]  # diverged: counted, best before divergence
    assert adaptive["n_diverged"] == 1 and adaptive["best_valid_ppl_mean"] == pytest.approx(3.0)
    assert adaptive["test_ppl_at_best_mean"] == pytest.approx(3.1)
    assert adaptive["final_K_mean"] == 20 and np.isnan(adaptive["best_valid_ppl_sd"])
    failed = summary.loc["K=20"]
    assert failed["n_failed"] == 1 and np.isnan(failed["best_valid_ppl_mean"])


def test_regression_summary_uses_losses_and_config_fallback(outputs):
    results, _ = outputs
    summary = read(results, "linear", "summary.csv").set_index("setting")
    assert list(summary.index) == ["K=5", "δ=0.5"]  # δ=0.5 identified from config.yaml only
    assert summary["best_valid_ppl_mean"].isna().all()
    assert summary.loc["K=5", "best_valid_loss_mean"] == pytest.approx(0.4)
    assert summary.loc["K=5", "test_loss_at_best_mean"] == pytest.approx(0.45)
    assert summary.loc["δ=0.5", "test_loss_at_best_mean"] == pytest.approx(0.35)
    assert summary.loc["δ=0.5", "K"] == 15 and (summary["task"] == "regression").all()
    runs = read(results, "linear", "runs.csv")
    assert (runs["true_rho"] == 0.9).all() and runs["valid_ppl"].isna().all()


def test_profiles_are_the_last_of_each_run(outputs):
    results, _ = outputs
    profiles = read(results, "copy", "profiles.csv")
    assert not {"setting", "seed", "lag", "phi", "cum", "tail", "beta_hat", "tau"} \
        - set(profiles.columns)
    assert profiles.groupby(["setting", "seed"])["eval"].unique().map(list).to_dict() == {
        ("K=10", 1): [3], ("K=10", 2): [3], ("δ=0.1", 1): [2]}
    assert len(profiles) == 3 * 20


def test_provenance(outputs):
    results, _ = outputs
    provenance = json.loads((results / "copy" / "provenance.json").read_text())
    assert provenance["runs_per_status"] == {"finished": 2, "diverged": 1, "failed": 1}
    assert provenance["git_commits"] == ["abc1234"]
    assert provenance["torch_versions"] == ["2.13.0"]
    assert provenance["scale"] == ["cpu-scale: LSTM 2x50"]
    assert provenance["train_core_hours"] == pytest.approx((30 + 30 + 20) / 3600, abs=1e-4)


# ----------------------------------------------------------------------------- figures
def test_figures_written(outputs):
    results, _ = outputs
    for experiment, names in [("copy", ["convergence", "validation", "runtime", "decay"]),
                              ("linear", ["convergence", "validation", "runtime", "decay",
                                          "beta_vs_rho"])]:
        for name in names:
            path = results / experiment / "figures" / f"{name}.png"
            assert path.is_file() and path.stat().st_size > 10_000, path
    assert not (results / "copy" / "figures" / "beta_vs_rho.png").exists()


def test_table_has_ours_and_the_papers(outputs):
    results, _ = outputs
    table = (results / "copy" / "table.md").read_text()
    assert "1.036 (0.005)" in table and "1.030 (0.005)" in table  # paper, copy m=10
    assert "cpu-scale: LSTM 2x50" in table
    row = next(line for line in table.splitlines() if line.startswith("| K=10 |"))
    assert "1.350 (0.21)" in row and "1.325 (0.11)" in row and "1.036 (0.005)" in row
    assert re.search(r"\| δ=0\.1 \| 1 \(1 diverged\) \|", table)
    assert "| K=5 |" in table  # a paper setting we did not run still appears
    linear = (results / "linear" / "table.md").read_text()
    assert "loss" in linear and "no published counterpart" in linear


# ----------------------------------------------------------------------------- ARTBP
MIXED_ORDER = ["K=10", "δ=0.5", "ARTBP c=1/10", "ARTBP α=4, mean 10", "ARTBP c=1/20"]


def test_artbp_settings_are_labelled_ordered_and_summarised(outputs):
    results, _ = outputs
    summary = read(results, "mixed", "summary.csv").set_index("setting")
    assert list(summary.index) == MIXED_ORDER  # fixed, adaptive, then ARTBP by mean length
    artbp = summary.loc["ARTBP c=1/10"]
    assert artbp["method"] == "artbp" and artbp["n_seeds"] == 2 and np.isnan(artbp["delta"])
    assert artbp["test_ppl_at_best_mean"] == pytest.approx(1.35)  # 1.3 and 1.4
    assert artbp["segment_length_mean"] == pytest.approx(10.0)  # (9.5 + 10.5) / 2, both seeds
    # per run: mean of its evaluations (0.3, 0.5); then over seeds
    assert artbp["grad_rel_var_mean"] == pytest.approx(0.4)
    assert summary.loc["ARTBP α=4, mean 10", "grad_rel_var_mean"] == pytest.approx(0.2)
    assert np.isnan(summary.loc["K=10", "grad_rel_var_mean"])
    assert summary.loc["ARTBP c=1/20", "final_K_mean"] == 20
    runs = read(results, "mixed", "runs.csv")
    top = runs[(runs["setting"] == "ARTBP c=1/20") & (runs["eval"] == 2)]
    assert top["trunc_max"].tolist() == [99]
    assert "99.0" not in (results / "mixed" / "runs.csv").read_text()  # written as an integer
    assert runs.loc[runs["method"] != "artbp", "grad_rel_var"].isna().all()


def load_figures_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("figures", SCRIPTS[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figures_draw_three_families_and_the_variance_panel(outputs):
    results, _ = outputs
    figures = load_figures_module()
    summary = read(results, "mixed", "summary.csv")
    styles = figures.setting_styles(summary)
    assert [styles[s]["linestyle"] for s in MIXED_ORDER] == ["--", "-", ":", ":", ":"]
    assert len({styles[s]["color"] for s in MIXED_ORDER[2:]}) == 3
    import analysis_common  # importable: loading figures.py put scripts/ on sys.path
    assert sorted(MIXED_ORDER, key=analysis_common.setting_order) == MIXED_ORDER
    for name in ("convergence", "runtime"):  # four panels: wider than the three of 'copy'
        mixed = plt_width(results / "mixed" / "figures" / f"{name}.png")
        assert mixed > 1.2 * plt_width(results / "copy" / "figures" / f"{name}.png")
    table = (results / "mixed" / "table.md").read_text()
    lines = [line.split(" | ")[0][2:] for line in table.splitlines() if line.startswith("| ")]
    assert [line for line in lines if line in MIXED_ORDER] == MIXED_ORDER
    assert lines[-3:] == MIXED_ORDER[2:]  # ARTBP after the paper's settings


def plt_width(path: Path) -> int:
    import matplotlib.image
    return matplotlib.image.imread(path).shape[1]


# ----------------------------------------------------------------------------- independence
def test_scripts_do_not_import_training_code():
    for script in SCRIPTS + HELPERS:
        source = script.read_text()
        assert not re.search(r"^\s*(import|from)\s+(atbptt|torch)\b", source, re.MULTILINE)


def test_paper_results_transcribed():
    paper = pd.read_csv(ROOT / "scripts" / "paper_results.csv", dtype=str)
    assert list(paper.columns) == ["dataset", "metric", "setting", "mean", "sd"]
    assert len(paper) == 48  # 8 + 8 copy cells, 4 x 8 language-model cells (NOTES §6)
    row = paper[(paper["dataset"] == "ptb") & (paper["metric"] == "test_ppl")
                & (paper["setting"] == "δ=0.1")]
    assert row[["mean", "sd"]].values.tolist() == [["87.2", "0.2"]]


def test_floor_and_stand_ins_by_hand(outputs):
    results, _ = outputs
    summary = read(results, "copy_paper", "summary.csv")
    assert summary["test_ppl_floor"].iloc[0] == pytest.approx(math.exp(0.2))
    standins = read(results, "copy_paper", "standins.csv").iloc[0]
    assert standins["n_audited"] == 3 and standins["true_rel_bias_median"] == pytest.approx(0.2)
    # grad: 0.5 ≥ 0.1, 0.4 ≥ 0.2, 0.2 < 0.3; norm_sum: 0.05 < 0.1, 0.3 ≥ 0.2, 0.1 < 0.3
    assert standins["share_grad_bounds_true"] == pytest.approx(2 / 3)
    assert standins["share_norm_sum_bounds_true"] == pytest.approx(1 / 3)
    assert standins["K_hat_0.5_grad_median"] == 30 and standins["K_hat_0.5_norm_sum_median"] == 10
    table = (results / "copy_paper" / "table.md").read_text()
    floor_row = next(line for line in table.splitlines() if line.startswith("| best attainable"))
    assert f"{math.exp(0.2):.4f}" in floor_row and "test 20.00 %" in floor_row
    assert "Initialization: paper" in table and "| K=10 | 3 |" in table
    assert (results / "copy_paper" / "figures" / "standins.png").is_file()
    assert not (results / "copy" / "standins.csv").exists()  # nothing audited there
    provenance = json.loads((results / "copy" / "provenance.json").read_text())
    assert provenance["inits"] == ["torch"]  # runs from before model.init existed


def test_floor_table_fills_runs_that_did_not_record_theirs(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("aggregate", SCRIPTS[0])
    aggregate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(aggregate)
    path = tmp_path / "copy_floor.csv"
    pd.DataFrame([{"dataset": "copy_paper", "split": s, "targets": 1, "undetermined_share": 0.1,
                   "undetermined_entropy": 1.0, "ppl_floor": 1.1} for s in ("valid", "test")]
                 ).to_csv(path, index=False)
    floors = aggregate.read_floor_table(path)
    old = {"dataset": "copy_paper", "default_copy_data": True}
    aggregate.fill_floor(old, floors)
    assert aggregate.ppl_floor(old, "test") == pytest.approx(1.1)
    other_data = {"dataset": "copy_paper", "default_copy_data": False}  # e.g. a subset
    aggregate.fill_floor(other_data, floors)
    assert math.isnan(aggregate.ppl_floor(other_data, "test"))
    recorded = {"dataset": "copy_paper", "default_copy_data": True,
                "ppl_floor": {"test": {"ppl_floor": 1.3}}}
    aggregate.fill_floor(recorded, floors)  # a run's own record wins
    assert aggregate.ppl_floor(recorded, "test") == pytest.approx(1.3)
    assert aggregate.read_floor_table(tmp_path / "absent.csv") == {}


def test_git_commit_outside_a_checkout_uses_the_declared_commit(tmp_path, monkeypatch):
    from atbptt.metrics import git_commit
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.delenv("ATBPTT_GIT_COMMIT", raising=False)
    assert git_commit(tmp_path) == "unknown"
    monkeypatch.setenv("ATBPTT_GIT_COMMIT", "ead9a11")
    assert git_commit(tmp_path) == "ead9a11 (declared)"
    # inside a checkout, git wins over the declaration
    here = git_commit(Path(__file__).resolve().parent)
    assert "(declared)" not in here and here != "unknown"
