"""A joblib sweep when a worker dies or the sweep is told to stop (launcher.py), through the
real CLI: the other jobs complete, the dead worker's job resumes from its checkpoint; SIGTERM
stops every worker with its job 'interrupted', and the same command resumes the sweep."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = ["dataset.train_length=400", "dataset.eval_length=100", "dataset.batch_size=8",
        "dataset.eval_batch_size=8", "model.hidden_size=8", "model.embedding_size=8",
        "method.window=20", "method.burn_in=5", "method.num_windows=4", "method.k_max=20", "K=5",
        "evals_per_epoch=1", "epochs=16", "progress=false"]


def sweep_command(sweep: Path) -> list:
    return [sys.executable, "-m", "atbptt.cli", "-m", *TINY, "seed=0,1,2",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            "hydra.sweep.subdir=${hydra.job.num}", f"hydra.sweep.dir={sweep}"]


def launch(sweep: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATBPTT_OFFLINE": "1"}
    return subprocess.Popen(sweep_command(sweep), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def rows(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.csv").read_text().splitlines()) - 1
    except FileNotFoundError:
        return 0


def holder(run_dir: Path) -> int:
    return int((run_dir / "run.lock").read_text().split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive either
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def wait_until(condition, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def status(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text())["status"]


def evals(run_dir: Path) -> list:
    return [int(line.split(",")[0])
            for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]


@pytest.mark.slow
def test_a_killed_worker_does_not_take_the_sweep_down(tmp_path):
    sweep = tmp_path / "sweep"
    proc = launch(sweep, tmp_path)
    wait_until(lambda: rows(sweep / "0") >= 3 and rows(sweep / "1") >= 1, proc)
    os.kill(holder(sweep / "0"), signal.SIGKILL)  # as the out-of-memory killer would
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    err = proc.stderr.read()
    assert "a sweep worker process died" in err and "run again, from their last checkpoints" in err
    assert "Traceback" not in err
    for job in ("0", "1", "2"):
        assert status(sweep / job) == "finished"
        assert evals(sweep / job) == list(range(17))  # no row lost or repeated


@pytest.mark.slow
def test_sigterm_to_a_sweep_stops_its_workers_and_the_sweep_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    proc = launch(sweep, tmp_path)
    wait_until(lambda: rows(sweep / "0") >= 2 and rows(sweep / "1") >= 2, proc)
    workers = {holder(sweep / "0"), holder(sweep / "1")}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    lines = [l for l in proc.stderr.read().splitlines() if l.startswith("atbptt-run")]
    assert lines[-1].startswith(f"atbptt-run: sweep {sweep} stopped by SIGTERM"), lines
    assert all("interrupted by SIGTERM at evaluation" in l for l in lines[:-1]) and len(lines) == 3
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)  # no orphan goes on training
    assert status(sweep / "0") == status(sweep / "1") == "interrupted"
    assert not (sweep / "2" / "run.json").exists()  # never started
    again = launch(sweep, tmp_path)
    assert again.wait(timeout=600) == 0, again.stderr.read()
    for job in ("0", "1", "2"):
        assert status(sweep / job) == "finished" and evals(sweep / job) == list(range(17))
