"""How a run stops when it is told to or cannot write (run.py): SIGTERM and Ctrl-C end with one
line and status 'interrupted'; an OS error (full disk, permissions, I/O) ends with one line
naming the file, status 'failed' and no temporary file left; either way the same command then
resumes and the result equals an uninterrupted run's."""
from __future__ import annotations

import csv
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atbptt import files
from atbptt.metrics import TIME_COLUMNS
from atbptt.run import RunStopped
from atbptt.run import run as run_training
from conftest import tiny_config as tiny_any_device

REPO = Path(__file__).resolve().parents[1]
TINY = ["dataset.train_length=400", "dataset.eval_length=100", "dataset.batch_size=8",
        "dataset.eval_batch_size=8", "model.hidden_size=8", "model.embedding_size=8",
        "method.window=20", "method.burn_in=5", "method.num_windows=4", "method.k_max=20", "K=5",
        "evals_per_epoch=4", "epochs=2", "progress=false", "threads=1"]


def tiny_config(*overrides: str):
    return tiny_any_device("device=cpu", "evals_per_epoch=4", *overrides)


def rows(run_dir: Path) -> list:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)]


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def temporaries(run_dir: Path) -> list:
    return [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def cli(args, cwd: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATBPTT_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "atbptt.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def data_rows(run_dir: Path) -> int:
    try:
        return max(len((run_dir / "metrics.csv").read_text().splitlines()) - 1, 0)
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    proc = cli([*TINY, f"hydra.run.dir={root / 'run'}"], root)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return root / "run"


# ------------------------------------------------------------------------------- signals
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_ends_the_run_in_one_line_as_interrupted_and_it_resumes(tmp_path, reference,
                                                                         signum):
    run_dir = tmp_path / "run"
    victim = cli([*TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    deadline = time.monotonic() + 240
    while data_rows(run_dir) < 3 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signum)
    assert victim.wait(timeout=60) == 128 + signum
    lines = victim.stderr.read().strip().splitlines()
    name = signal.Signals(signum).name
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith(f"atbptt-run: {run_dir}: interrupted by {name} at evaluation ")
    assert lines[0].endswith("; rerun the same command to resume")
    info = status(run_dir)
    assert info["status"] == "interrupted" and info["message"] in lines[0]
    assert temporaries(run_dir) == [] and (run_dir / "checkpoint.pt").exists()
    again = cli([*TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.wait(timeout=300) == 0, again.stderr.read()
    assert rows(run_dir) == rows(reference) and status(run_dir)["status"] == "finished"


# ---------------------------------------------------------------------- a real full file
def _limit_file_size(size: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))  # writes beyond: EFBIG
    return apply


@pytest.mark.slow
def test_a_file_the_os_refuses_stops_the_run_in_one_line_and_it_resumes(tmp_path, reference):
    """RLIMIT_FSIZE below the checkpoint's size: every write past it fails with EFBIG, as on a
    full disk. One line names the file, run.json says failed, no temporary file is left, and
    once the limit is gone the same command resumes to the uninterrupted result."""
    run_dir = tmp_path / "run"
    limit = (reference.parent / "run" / "metrics.csv").stat().st_size + 4096
    victim = cli([*TINY, f"hydra.run.dir={run_dir}"], tmp_path, preexec_fn=_limit_file_size(limit))
    assert victim.wait(timeout=300) == 2  # no checkpoint could be written: nothing ran
    lines = victim.stderr.read().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert f"cannot write {run_dir / 'checkpoint.pt'}: File too large (EFBIG)" in lines[0]
    assert "rerun the same command to resume" in lines[0]
    info = status(run_dir)
    assert info["status"] == "failed" and "EFBIG" in info["message"]
    assert temporaries(run_dir) == []
    again = cli([*TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.wait(timeout=300) == 0, again.stderr.read()
    assert rows(run_dir) == rows(reference)


# ------------------------------------------------------- any write failing, in-process
ERRNOS = [errno.ENOSPC, errno.EACCES, errno.EIO, errno.EROFS, errno.EDQUOT]


@pytest.mark.usefixtures("torch_state")
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(nth=st.integers(0, 40), code=st.sampled_from(ERRNOS))
def test_any_write_failing_stops_cleanly_and_the_resume_is_lossless(tmp_path_factory, monkeypatch,
                                                                   nth, code):
    """The ``nth`` file write of a run fails with ``code``: the run stops with one line naming
    a file of the run and the error, records 'failed' where it can, leaves no temporary file;
    the same run again finishes with the rows of an uninterrupted run."""
    root = tmp_path_factory.mktemp("w")
    cfg = tiny_config()
    assert run_training(cfg, root / "reference") == "finished"
    calls = []

    def failing_open(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == nth + 1:
            raise OSError(code, os.strerror(code), str(path))
        return open(path, *args, **kwargs)

    run_dir = root / "run"
    with monkeypatch.context() as patch:
        patch.setattr(files, "open", failing_open, raising=False)
        try:
            assert run_training(cfg, run_dir) == "finished"
            assert len(calls) <= nth  # the run made fewer writes than nth
        except RunStopped as stop:
            message = str(stop)
            assert "\n" not in message and f"({errno.errorcode[code]})" in message
            assert f"cannot write {run_dir}" in message and stop.code in (1, 2)
            info = run_dir / "run.json"
            if info.exists():
                assert json.loads(info.read_text())["status"] in ("failed", "running")
    assert temporaries(run_dir) == []
    assert run_training(cfg, run_dir) in ("finished",)
    assert rows(run_dir) == rows(root / "reference")


@pytest.mark.usefixtures("torch_state")
def test_a_diverged_run_keeps_no_checkpoint(tmp_path):
    """Nothing is left to resume (running it again is a no-op), so the checkpoint goes, as a
    finished run's does; metrics.csv and run.json stay."""
    run_dir = tmp_path / "run"
    assert run_training(tiny_config("optim.lr=1e9"), run_dir) == "diverged"
    assert not (run_dir / "checkpoint.pt").exists() and status(run_dir)["status"] == "diverged"
    assert (run_dir / "metrics.csv").exists() and temporaries(run_dir) == []
