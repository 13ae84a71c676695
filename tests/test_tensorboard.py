"""logger=tensorboard: the event files hold the values of metrics.csv, per run of a sweep."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from atbptt.metrics import MetricsWriter, write_profile
from atbptt.tensorboard_log import TB_DIR, TensorBoardLog, read_rows, tag
from atbptt.validate import precheck
from conftest import run_cli

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing import event_accumulator as ea  # noqa: E402
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

KEEP_ALL = {ea.TENSORS: 0, ea.IMAGES: 0}


def events(log_dir: Path) -> ea.EventAccumulator:
    return ea.EventAccumulator(str(log_dir), size_guidance=KEEP_ALL).Reload()


def scalars(acc: ea.EventAccumulator, name: str) -> dict:
    """{step: value} of a tag, each value read back as stored (float64)."""
    return {e.step: tensor_util.make_ndarray(e.tensor_proto).item() for e in acc.Tensors(name)}


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def assert_events_hold_csv(run_dir: Path) -> None:
    table = read_rows(run_dir / "metrics.csv")
    acc = events(run_dir / TB_DIR)
    columns = {c for row in table for c in row}
    assert {"valid_ppl", "K", "lr", "beta_hat", "delta_hat", "K_hat_0.1", "delta_hat_grad",
            "delta_hat_norm_sum", "true_rel_bias"} <= columns
    assert set(acc.Tags()["tensors"]) == {tag(c) for c in columns}
    for column in columns:
        stored = scalars(acc, tag(column))
        expected = {int(r["tokens"]): r[column] for r in table if column in r}
        assert stored.keys() == expected.keys(), column
        assert all(same(stored[s], v) for s, v in expected.items()), column
    profiles = [e.step for e in acc.Images("estimator/profile")]
    assert profiles == [int(r["tokens"]) for r in table if "beta_hat" in r]


def test_sweep_writes_event_files_equal_to_metrics_csv(tmp_path, tiny):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *tiny, "K=3,5", "method=adaptive", "method.audit=true",
                      "logger=tensorboard", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name[:4] for p in jobs] == ["K=3,", "K=5,"]
    assert all("logger" not in p.name for p in jobs)  # not part of the job's name
    for job in jobs:
        assert len(read_rows(job / "metrics.csv")) == 3
        assert_events_hold_csv(job)
    runs = EventMultiplexer().AddRunsFromDirectory(str(sweep)).Runs()  # tensorboard --logdir
    assert sorted(runs) == [f"{job.name}/{TB_DIR}" for job in jobs]


def test_csv_logger_writes_no_event_files(tmp_path, tiny):
    run = tmp_path / "run"
    result = run_cli([*tiny, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (run / "metrics.csv").exists() and not (run / TB_DIR).exists()


def test_missing_tensorboard_is_one_line_before_the_run(tmp_path, tiny):
    hidden = tmp_path / "site" / "tensorboard"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    run = tmp_path / "run"
    result = run_cli([*tiny, "logger=tensorboard", f"hydra.run.dir={run}"], cwd=tmp_path,
                     env={"PYTHONPATH": str(hidden.parent)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "logger=tensorboard needs the tensorboard package" in lines[0]
    assert not run.exists()


def test_bad_logger_value_is_one_line():
    message = precheck(["logger=wandb"])
    assert message is not None and "expected one of [csv, tensorboard]" in message


def fake_row(i: int) -> dict:
    return {"eval": i, "epoch": i / 4, "step": 10 * i, "tokens": 100 * i, "train_time": 1.5 * i,
            "valid_loss": 1 / (i + 1), "K": 5 + i, "beta_hat": 0.5 + i / 10,
            "delta_hat": math.inf if i == 1 else 0.1 / (i + 1)}


def test_resume_rebuilds_the_events_from_the_kept_rows(tmp_path):
    """A resumed run truncates metrics.csv to its checkpoint; tb/ must follow, not keep the
    rows written after the checkpoint by the killed process."""
    metrics = MetricsWriter(tmp_path / "metrics.csv")
    metrics.truncate(0)
    for i in range(3):
        metrics.append(fake_row(i))
        write_profile(tmp_path / "profiles" / f"eval_{i:05d}.csv", [1.0, 0.5, 0.25],
                      [1.0, 1.2, 1.3], [1.0, 0.5, 0.25], 0.5, 1)
    first = TensorBoardLog(tmp_path, origin=0.0)
    assert first.sync() == 3 and first.sync() == 0
    first.close()
    metrics.truncate(2)  # resumed from the checkpoint of row 1; row 2 is written again
    metrics.append({**fake_row(2), "valid_loss": 7.0})
    resumed = TensorBoardLog(tmp_path, origin=0.0)
    assert resumed.sync() == 3
    resumed.close()
    acc = events(tmp_path / TB_DIR)
    assert scalars(acc, "loss/valid_loss") == {0: 1.0, 100: 0.5, 200: 7.0}
    assert scalars(acc, "estimator/delta_hat")[100] == math.inf
    assert [e.wall_time for e in acc.Tensors("truncation/K")] == [0.0, 1.5, 3.0]  # train_time
    assert len(list((tmp_path / TB_DIR).iterdir())) == 1
