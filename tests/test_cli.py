"""End to end through the real CLI: files and columns, a 2-job sweep, determinism."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from atbptt.metrics import COLUMNS, TIME_COLUMNS
from conftest import SHARED_DATA, run_cli

REQUIRED = ["epoch", "step", "tokens", "train_time", "wall_time", "train_loss", "valid_loss",
            "test_loss", "valid_ppl", "test_ppl", "K", "beta_hat", "delta_hat", "K_hat_1.0",
            "K_hat_0.9", "K_hat_0.5", "K_hat_0.1", "estimation_time"]


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def without_time(table: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in table]


def test_run_writes_config_metrics_and_run_json(tmp_path, tiny):
    out = tmp_path / "run"
    result = run_cli([*tiny, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / ".hydra" / "config.yaml").exists()
    table = rows(out)
    assert list(table[0]) == list(COLUMNS) and set(REQUIRED) <= set(table[0])
    assert [r["eval"] for r in table] == ["0", "1", "2"]
    assert float(table[0]["epoch"]) == 0 and table[0]["train_loss"] == ""
    assert float(table[-1]["epoch"]) == pytest.approx(1.0)
    assert float(table[-1]["valid_ppl"]) < float(table[0]["valid_ppl"])
    assert all(2 <= int(r["K_hat_0.1"]) <= 20 for r in table)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["dataset"] == "copy"
    assert info["vocab_size"] == 6 and info["tokens"] == {"train": 3200, "valid": 800, "test": 800}
    assert info["num_params"] > 0 and info["device"] == "cpu" and info["end_time"]
    for key in ("torch_version", "git_commit", "start_time"):
        assert info[key]
    assert (out / "profiles" / "eval_00002.csv").exists()
    assert not (out / "checkpoint.pt").exists()
    assert all(r[c] == "" for r in table for c in ("trunc_mean", "trunc_max", "grad_rel_var"))
    assert info["artbp"] is None
    # nothing written outside the run directory
    assert {p.name for p in tmp_path.iterdir()} == {"run"}
    again = run_cli([*tiny, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_same_seed_same_metrics_and_seed_changes_them(tmp_path, tiny):
    dirs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        dirs[name] = tmp_path / name
        result = run_cli([*tiny, "method=adaptive", "method.reestimate_every=3",
                          "method.reestimate_steps=null", "model.dropout=0.1",
                          f"seed={seed}", f"hydra.run.dir={dirs[name]}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    a, b, c = (without_time(rows(dirs[n])) for n in "abc")
    assert a == b
    # the adaptive run keeps K within [k_min, k_max] and logs a finite bias estimate
    assert all(2 <= int(r["K"]) <= 20 and float(r["delta_hat"]) < float("inf") for r in a)
    assert len({r["K"] for r in a}) > 1  # K was re-estimated
    assert a[0]["valid_loss"] != c[0]["valid_loss"]  # initial weights depend on seed


def test_initial_weights_shared_across_methods(tmp_path, tiny):
    first = {}
    for setting in ("K5", "K10", "delta0.5"):
        out = tmp_path / setting
        assert run_cli([*tiny, f"+setting={setting}", f"hydra.run.dir={out}"],
                       cwd=tmp_path).returncode == 0
        first[setting] = rows(out)[0]["valid_loss"]
    assert len(set(first.values())) == 1


def test_two_job_sweep(tmp_path, tiny):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *tiny, "+setting=K5,delta0.5", f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and all("setting=" in p.name for p in jobs)
    methods = set()
    for job in jobs:
        info = json.loads((job / "run.json").read_text())
        assert info["status"] == "finished" and info["threads"] == 1
        methods.add(info["method"])
        assert yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["epochs"] == 1
    assert methods == {"fixed", "adaptive"}


@pytest.mark.parametrize("argv,key", [(["model=transformer"], "model"), (["K=0"], "K"),
                                      (["K=ten"], "K"), (["epochs=-1"], "epochs"),
                                      (["device=tpu"], "device"), (["nope=1"], "nope"),
                                      (["dataset=nope"], "dataset")])
def test_bad_input_exits_nonzero_with_one_line(tmp_path, argv, key):
    result = run_cli([*argv, f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_regression_dataset_leaves_ppl_empty(tmp_path, tiny):
    out = tmp_path / "lin"
    result = run_cli([*tiny, "dataset=linear", "model=gru", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = rows(out)
    assert table[-1]["valid_ppl"] == "" and float(table[-1]["valid_loss"]) > 0
    info = json.loads((out / "run.json").read_text())
    assert info["task"] == "regression" and info["true_rho"] == pytest.approx(0.9)


def test_paper_copy_run_records_init_stand_in_and_floor(tmp_path, tiny):
    out = tmp_path / "run"
    result = run_cli(["dataset=copy_variable_paper", *tiny, "method=adaptive", "delta=0.5",
                      f"hydra.run.dir={out}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["init"] == "paper" and info["grad_norm_bound"] == "grad"
    assert info["dataset"] == "copy_variable_paper" and len(info["data_sha256"]) == 64
    assert set(info["ppl_floor"]) == {"train", "valid", "test"}
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    for row in rows:  # both stand-ins logged; the run's own is repeated in delta_hat
        assert row["delta_hat"] == row["delta_hat_grad"] and row["delta_hat_norm_sum"] != ""
        assert float(row["delta_hat_norm_sum"]) <= float(row["delta_hat_grad"]) + 1e-12


def test_corrupt_paper_copy_file_is_refused_with_one_line(tmp_path, tiny):
    folder = tmp_path / "d" / "copy-aicher2019"
    folder.mkdir(parents=True)
    (folder / "copy_fixed.npz").write_bytes(b"not the data")
    result = run_cli(["dataset=copy_paper", f"dataset.data_dir={tmp_path / 'd'}", *tiny,
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "copy_fixed.npz" in lines[0] and "SHA-256" in lines[0]


def test_artbp_run_logs_segment_lengths_variance_and_its_parameters(tmp_path, tiny):
    out = tmp_path / "artbp"
    result = run_cli([*tiny, "method=artbp", "K=4", "method.audit=true", "model.num_layers=2",
                      f"hydra.run.dir={out}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = rows(out)
    assert list(table[0]) == list(COLUMNS) and table[0]["trunc_mean"] == ""
    for r in table[1:]:  # 50 segments per half epoch: the realised mean is near K = 4
        assert 2.5 < float(r["trunc_mean"]) < 6 and int(r["trunc_max"]) >= 8
        assert int(r["K"]) == 4 and float(r["lr"]) == pytest.approx(4 ** 0.5)
    assert all(0 < float(r["grad_rel_var"]) < float("inf") for r in table)
    assert all(r["true_rel_bias"] == "" and r["delta_hat"] != "" for r in table)
    info = json.loads((out / "run.json").read_text())
    assert info["method"] == "artbp" and info["style"] == "chunk" and info["status"] == "finished"
    assert info["artbp"] == {"schedule": "constant", "mean_length": 4.0, "c": 0.25, "alpha": None,
                             "stride": 1, "max_length": None, "clip_lr_K": 4.0, "draws": 16}


ARTBP_TINY = ["dataset.train_length=200", "dataset.eval_length=50", "dataset.batch_size=4",
              "dataset.eval_batch_size=4", "model.hidden_size=8", "model.embedding_size=8",
              "method.window=20", "method.burn_in=5", "method.num_windows=4", "method.k_max=20",
              "method.artbp_draws=4", "progress=false"]


def finished_jobs(sweep: Path) -> dict:
    """(dataset, cell) -> metrics rows of every finished job of a sweep."""
    jobs = {}
    for info_path in sweep.rglob("run.json"):
        info = json.loads(info_path.read_text())
        assert info["status"] == "finished" and info["method"] == "artbp", info["message"]
        jobs[(info["dataset"], info["model"].split()[0].lower())] = rows(info_path.parent)
    return jobs


def test_artbp_runs_on_every_synthetic_dataset_and_model(tmp_path):
    datasets = ["copy", "copy_variable", "copy_paper", "copy_variable_paper", "linear", "var"]
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "method=artbp", "K=5", "epochs=1", f"dataset={','.join(datasets)}",
                      "model=lstm,gru,srnn", "method.artbp_schedule=poly", *ARTBP_TINY,
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = finished_jobs(sweep)
    assert set(jobs) == {(d, c) for d in datasets for c in ("lstm", "gru", "srnn")}
    for table in jobs.values():
        assert float(table[-1]["valid_loss"]) < float(table[0]["valid_loss"])
        assert float(table[-1]["trunc_mean"]) > 0 and float(table[-1]["grad_rel_var"]) >= 0


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "ptb" / "ptb.train.txt").exists(),
                    reason=f"corpora not found under {SHARED_DATA} (set ATBPTT_DATA)")
def test_artbp_runs_on_the_word_corpora(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "method=artbp", "K=10", "epochs=0.0005", "dataset=ptb,wikitext2",
                      "method.log_estimates=0", f"dataset.data_dir={SHARED_DATA}", *ARTBP_TINY,
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                     env={"ATBPTT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    jobs = finished_jobs(sweep)
    assert set(jobs) == {("ptb", "lstm"), ("wikitext2", "lstm")}
    for table in jobs.values():
        assert float(table[-1]["test_ppl"]) < float(table[0]["test_ppl"])
        assert int(table[-1]["trunc_max"]) >= float(table[-1]["trunc_mean"]) > 0
