"""A live run's directory tampered with, through the real CLI: run.lock removed (the lock still
holds), the directory removed (the run stops in one line and does not make it again), and the
line endings and bytes of metrics.csv across a resume."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atbptt.metrics import COLUMNS, TIME_COLUMNS
from atbptt.run import run as run_training
from conftest import run_interrupted, tiny_config

TINY = ["dataset.train_length=400", "dataset.eval_length=100", "dataset.batch_size=8",
        "dataset.eval_batch_size=8", "model.hidden_size=8", "model.embedding_size=8",
        "method.window=20", "method.burn_in=5", "method.num_windows=4", "method.k_max=20", "K=5",
        "evals_per_epoch=1", "epochs=200", "progress=false", "threads=1"]


def start(run_dir: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATBPTT_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "atbptt.cli", *TINY, f"hydra.run.dir={run_dir}"],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def wait_for_rows(run_dir: Path, proc: subprocess.Popen, n: int) -> None:
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if len((run_dir / "metrics.csv").read_text().splitlines()) > n:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError("the run ended before it wrote its rows")


@pytest.mark.slow
def test_removing_run_lock_of_a_live_run_does_not_let_a_second_run_in(tmp_path):
    run_dir = tmp_path / "run"
    first = start(run_dir, tmp_path)
    try:
        wait_for_rows(run_dir, first, 2)
        (run_dir / "run.lock").unlink()
        second = start(run_dir, tmp_path)
        assert second.wait(timeout=120) == 2
        lines = second.stderr.read().strip().splitlines()
        assert len(lines) == 1 and f"{run_dir} is in use by another run" in lines[0], lines
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    table = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    evals = [int(line.split(",")[0]) for line in table]
    assert evals == list(range(len(evals)))  # no evaluation written twice
    assert not list(run_dir.glob("*.tmp"))


@pytest.mark.slow
def test_removing_the_directory_of_a_live_run_stops_it_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    victim = start(run_dir, tmp_path)
    try:
        wait_for_rows(run_dir, victim, 2)
        shutil.rmtree(run_dir)
        assert victim.wait(timeout=240) == 1
    finally:
        if victim.poll() is None:
            victim.kill()
    lines = victim.stderr.read().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert f"{run_dir} was removed while this run was writing it" in lines[0]
    assert not run_dir.exists()  # not made again, no headless metrics.csv


def _without_time(text: str) -> str:
    """metrics.csv with the time columns blanked (they differ between any two runs)."""
    drop = [COLUMNS.index(c) for c in TIME_COLUMNS]
    out = []
    for line in text.split("\n"):
        cells = line.split(",")
        out.append(",".join("" if i in drop and len(cells) == len(COLUMNS) and cells[0] != "eval"
                            else c for i, c in enumerate(cells)))
    return "\n".join(out)


@pytest.mark.usefixtures("torch_state")
def test_metrics_csv_has_one_line_ending_and_a_resume_is_byte_identical(tmp_path, monkeypatch):
    cfg = tiny_config("device=cpu", "evals_per_epoch=4")
    assert run_training(cfg, tmp_path / "reference") == "finished"
    run_interrupted(cfg, tmp_path / "run", 2, monkeypatch)
    assert run_training(cfg, tmp_path / "run") == "finished"
    reference = (tmp_path / "reference" / "metrics.csv").read_bytes()
    resumed = (tmp_path / "run" / "metrics.csv").read_bytes()
    for data in (reference, resumed):
        assert b"\r" not in data and data.endswith(b"\n")
    assert _without_time(resumed.decode()) == _without_time(reference.decode())
    assert resumed.split(b"\n")[0] == ",".join(COLUMNS).encode()
