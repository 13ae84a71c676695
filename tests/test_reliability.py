"""Reliability, through the real CLI in subprocesses: resume after SIGKILL, the run-directory
lock, damaged checkpoints, divergence inside a sweep, the joblib and submitit_local launchers,
and one-line errors for bad input."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from atbptt.metrics import TIME_COLUMNS

REPO = Path(__file__).resolve().parents[1]
# ~2.5 s of training: 2 epochs, 8 evaluations, 160 chunks
TINY = ["dataset.train_length=400", "dataset.eval_length=100", "dataset.batch_size=8",
        "dataset.eval_batch_size=8", "model.hidden_size=8", "model.embedding_size=8",
        "method.window=20", "method.burn_in=5", "method.num_windows=4", "method.k_max=20", "K=5",
        "evals_per_epoch=4", "epochs=2", "progress=false", "threads=1"]
DEAD_PROXY = "http://127.0.0.1:9"  # downloads fail at once, network or not


def cli(args) -> list:
    return [sys.executable, "-m", "atbptt.cli", *args]


def env(tmp_path: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ATBPTT_CACHE": str(tmp_path / "cache"),
            "ATBPTT_OFFLINE": "1", "http_proxy": DEAD_PROXY, "https_proxy": DEAD_PROXY,
            "HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "no_proxy": "", "NO_PROXY": ""}


def run(args, tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli(args), cwd=tmp_path, env=env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def rows(run_dir: Path) -> list:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)]


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def data_rows(run_dir: Path) -> int:
    try:
        return max(len((run_dir / "metrics.csv").read_text().splitlines()) - 1, 0)
    except FileNotFoundError:
        return 0


def profiles(run_dir: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "profiles").iterdir())}


# ------------------------------------------------------------------------------- resume
@pytest.mark.slow
@pytest.mark.parametrize("method", [
    ["method=fixed", "model.num_layers=2", "model.dropout=0.2"],
    # K changes every 3 chunks: the estimator's RNG, K and its counters are in the checkpoint
    # (PyTorch's initialization: on this tiny model its K̂ moves over more values than the paper's)
    ["method=adaptive", "method.reestimate_every=3", "method.reestimate_steps=null", "delta=0.05",
     "model.num_layers=2", "model.dropout=0.2", "model.init=torch"],
    # segment lengths drawn from the training RNG, their statistics and the variance draws
    ["method=artbp", "method.artbp_schedule=poly", "model.num_layers=2", "model.dropout=0.2"],
], ids=["fixed", "adaptive", "artbp"])
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, method):
    ref_dir, dir_ = tmp_path / "reference", tmp_path / "killed"
    args = [*TINY, *method]
    reference = subprocess.Popen(cli([*args, f"hydra.run.dir={ref_dir}"]), cwd=tmp_path,
                                 env=env(tmp_path), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
    victim = subprocess.Popen(cli([*args, f"hydra.run.dir={dir_}"]), cwd=tmp_path,
                              env=env(tmp_path), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while data_rows(dir_) < 2 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert 2 <= data_rows(dir_) < 9 and status(dir_)["status"] == "running"
    assert (dir_ / "checkpoint.pt").exists()
    assert reference.wait(timeout=240) == 0, reference.stderr.read().decode()

    # as if another commit had started it: the resume says so (one warning) and records it
    info = status(dir_)
    (dir_ / "run.json").write_text(json.dumps({**info, "git_commit": "f" * 40}))
    resumed = run([*args, f"hydra.run.dir={dir_}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    if info["git_commit"] != "unknown":
        warnings = [l for l in resumed.stderr.splitlines()
                    if "was started by commit ffffffffff" in l]
        assert len(warnings) == 1 and status(dir_)["resumed_by_commits"] == [info["git_commit"]]
    assert rows(dir_) == rows(ref_dir)  # bit-identical values, no row lost or repeated
    assert [r["eval"] for r in rows(dir_)] == [str(i) for i in range(9)]
    assert profiles(dir_) == profiles(ref_dir)
    assert status(dir_)["status"] == "finished" and not (dir_ / "checkpoint.pt").exists()
    if "method=adaptive" in method:
        assert len({r["K"] for r in rows(ref_dir)}) > 2  # K did change, more than once

    # a finished run re-run is a no-op that says so
    before = (dir_ / "metrics.csv").read_bytes()
    again = run([*args, f"hydra.run.dir={dir_}"], tmp_path)
    assert again.returncode == 0 and "already finished; nothing to do" in again.stdout
    assert (dir_ / "metrics.csv").read_bytes() == before

    # another config on the same run dir is refused, and leaves its files alone
    saved = {p.name: p.read_bytes() for p in (dir_ / ".hydra").iterdir()}
    other = run([*args, "K=6", f"hydra.run.dir={dir_}"], tmp_path)
    lines = other.stderr.strip().splitlines()
    assert other.returncode == 2 and len(lines) == 1 and "holds a different run" in lines[0]
    assert {p.name: p.read_bytes() for p in (dir_ / ".hydra").iterdir()} == saved
    assert (dir_ / "metrics.csv").read_bytes() == before


# --------------------------------------------------------------------------- the lock
@pytest.mark.slow
def test_two_runs_on_one_directory_only_one_trains(tmp_path):
    """Started together: one trains, the other is refused in one line naming the holder and
    writes nothing. The winner is then SIGKILLed: its lock dies with it, and the same command
    resumes. No evaluation row is written twice."""
    run_dir = tmp_path / "run"
    args = cli([*TINY, "epochs=8", "evals_per_epoch=1", f"hydra.run.dir={run_dir}"])
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env(tmp_path), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 240
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    loser = next(p for p in procs if p.poll() is not None)
    winner = next(p for p in procs if p is not loser)
    lines = loser.stderr.read().strip().splitlines()
    assert loser.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith(
        f"atbptt-run: error: {run_dir} is in use by another run (pid {winner.pid} on ")
    assert winner.poll() is None, "the winner ended before the loser was refused"
    winner.send_signal(signal.SIGKILL)
    winner.wait()
    resumed = run([*TINY, "epochs=8", "evals_per_epoch=1", f"hydra.run.dir={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["eval"] for r in rows(run_dir)] == [str(i) for i in range(9)]
    assert status(run_dir)["status"] == "finished"


HOLD_LOCK = """
import sys, time
from atbptt.rundir import RunDirLock
RunDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(300)
"""


@pytest.mark.slow
def test_each_sweep_job_locks_its_own_directory(tmp_path):
    """Job 0's directory is held by another process: that job is refused, job 1 runs."""
    sweep = tmp_path / "sweep"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(sweep / "0")],
                              stdout=subprocess.PIPE, text=True, env=env(tmp_path))
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run(["-m", *[a for a in TINY if not a.startswith("K=")], "K=5,6", "epochs=0.25",
                      "hydra.sweep.subdir=${hydra.job.num}", f"hydra.sweep.dir={sweep}"], tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lines = [l for l in result.stderr.splitlines() if l.startswith("atbptt-run:")]
    assert result.returncode == 2 and len(lines) == 2, result.stderr
    assert f"refused: {sweep / '0'} is in use by another run (pid {holder.pid} on " in lines[0]
    assert [p.name for p in (sweep / "0").iterdir()] == ["run.lock"]
    assert status(sweep / "1")["status"] == "finished"


# --------------------------------------------------------------------- checkpoint damage
@pytest.mark.slow
def test_a_truncated_checkpoint_says_how_to_restart(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, f"hydra.run.dir={run_dir}"]
    victim = subprocess.Popen(cli(args), cwd=tmp_path, env=env(tmp_path), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while data_rows(run_dir) < 2 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    checkpoint = run_dir / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    refused = run(args, tmp_path)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "Traceback" not in refused.stderr
    assert f"cannot resume from {checkpoint}" in lines[0] and "delete it to restart" in lines[0]
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    checkpoint.unlink()  # as the message says: the run starts again from its beginning
    again = run(args, tmp_path)
    assert again.returncode == 0, again.stderr
    assert [r["eval"] for r in rows(run_dir)] == [str(i) for i in range(9)]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_refused_sweep_job_does_not_stop_the_others(tmp_path, launcher):
    """Job 0's directory holds another run: it is refused (one line, its files untouched),
    job 1 still runs, and the sweep exits 2 at the end, naming the refused directory."""
    sweep = tmp_path / "sweep"
    tiny = [a for a in TINY if not a.startswith("K=")]
    args = [*tiny, "epochs=0.25", "hydra.sweep.subdir=${hydra.job.num}", f"hydra.sweep.dir={sweep}"]
    first = run(["-m", "K=5", *args], tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (sweep / "0").rglob("*") if p.is_file()}
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    second = run(["-m", "K=6,7", *args, *extra], tmp_path)
    lines = [l for l in second.stderr.splitlines() if l.startswith("atbptt-run:")]
    assert second.returncode == 2, second.stderr
    assert len(lines) == 2 and "refused" in lines[0] and "holds a different run" in lines[0]
    assert lines[1].startswith("atbptt-run: error: 1 sweep job(s) refused")
    (listing,) = sweep.glob("refused-*.txt")
    assert listing.read_text().splitlines() == [str(sweep / "0")] and str(listing) in lines[1]
    assert {p.name: p.read_bytes() for p in (sweep / "0").rglob("*") if p.is_file()} == before
    assert status(sweep / "0")["config"]["K"] == 5
    assert status(sweep / "1")["status"] == "finished" and status(sweep / "1")["config"]["K"] == 7


# --------------------------------------------------------------------------- divergence
@pytest.mark.slow
def test_divergence_stops_jobs_cleanly_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    # lr 1e9: the weight decay step alone multiplies the weights by ~-2e4 per chunk (inf, then
    # NaN); the adaptive run meets the NaN in its K estimator (every 10 chunks) first
    result = run(["-m", *TINY, "epochs=0.5", "method=fixed,adaptive", "optim.lr=1.0,1e9",
                  f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = {(status(p)["method"], status(p)["config"]["optim"]["lr"]): p
            for p in sweep.iterdir() if (p / "run.json").exists()}
    assert {key: status(p)["status"] for key, p in jobs.items()} == {
        ("fixed", 1.0): "finished", ("fixed", 1e9): "diverged",
        ("adaptive", 1.0): "finished", ("adaptive", 1e9): "diverged"}
    for method in ("fixed", "adaptive"):
        message = status(jobs[method, 1e9])["message"]
        assert message.startswith("diverged at epoch") and "nan" in message.lower()
        assert message in result.stderr
        assert len(rows(jobs[method, 1.0])) == 3
    assert "Traceback" not in result.stderr
    # the same sweep again on the same sweep dir: every job is a no-op that says so
    again = run(["-m", *TINY, "epochs=0.5", "method=fixed,adaptive", "optim.lr=1.0,1e9",
                 f"hydra.sweep.dir={sweep}"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already finished; nothing to do") == 2
    assert again.stdout.count("already diverged; nothing to do") == 2


# ------------------------------------------------------------------------------- sweeps
@pytest.mark.slow
def test_joblib_and_submitit_local_sweeps(tmp_path):
    """Two 2-job sweeps in the same folder, at the default (timestamped) sweep dir."""
    launchers = (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                 ["hydra/launcher=submitit_local"])
    for launcher in launchers:
        result = run(["-m", *TINY, "epochs=0.5", "seed=0,1", *launcher], tmp_path)
        assert result.returncode == 0, result.stderr
    sweeps = sorted((tmp_path / "results" / "sweeps" / "default").iterdir())
    assert len(sweeps) == 2  # the second sweep did not reuse (overwrite) the first
    for sweep in sweeps:
        jobs = sorted((p for p in sweep.iterdir() if (p / "run.json").exists()),
                      key=lambda p: status(p)["seed"])
        assert len(jobs) == 2
        for seed, job in enumerate(jobs):
            info = status(job)
            assert info["status"] == "finished" and info["threads"] == 1 and info["seed"] == seed
            assert f"- seed={seed}\n" in (job / ".hydra" / "overrides.yaml").read_text()  # its own
            assert [r["eval"] for r in rows(job)] == ["0", "1", "2"]
        assert rows(jobs[0])[0]["valid_loss"] != rows(jobs[1])[0]["valid_loss"]


# ---------------------------------------------------------------------------- bad input
def _bad_inputs():
    adaptive_short_window = ["method=adaptive", "method.window=10"]
    ptb = ["dataset=ptb", "epochs=0.01"]
    cases = [
        ("unknown-group-option", ["model=transformer"], "model"),
        ("unknown-group-option-in-sweep", ["-m", "model=lstm,transformer"], "model"),
        ("unknown-key", ["nope=1"], "nope"),
        ("unknown-nested-key", ["model.hidden=8"], "model.hidden"),
        ("wrong-type", ["K=ten"], "K"),
        ("wrong-type-float", ["delta=half"], "delta"),
        ("K-zero", ["K=0"], "K"),
        ("K-negative-in-sweep", ["-m", "K=5,-1"], "K"),
        ("delta-zero", ["delta=0"], "delta"),
        ("delta-above-one", ["delta=1.5"], "delta"),
        ("epochs-zero", ["epochs=0"], "epochs"),
        ("epochs-negative", ["epochs=-1"], "epochs"),
        ("k_min-above-k_max", ["method.k_min=30"], "method.k_min"),
        ("window-below-k_max", adaptive_short_window, "method.window"),
        ("missing-data-files", [*ptb, "dataset.data_dir={tmp}/empty"], "dataset.data_dir"),
        ("corrupt-data-files", [*ptb, "dataset.data_dir={tmp}/corrupt"], "checksum mismatch"),
        ("unknown-launcher", ["-m", "K=3,5", "hydra/launcher=joblb"], "hydra/launcher/joblb"),
        ("launcher-key-of-another-launcher", ["-m", "K=3,5", "hydra.launcher.n_jobs=2"],
         "hydra.launcher.n_jobs"),
        ("unwritable-output-dir", ["hydra.run.dir={tmp}/a_file/run"], "output directory"),
        ("unwritable-sweep-dir", ["-m", "K=3,5", "hydra.sweep.dir={tmp}/a_file/sweep"],
         "output directory"),
        # impossible across keys, refused before Hydra starts (more in tests/test_limits.py)
        ("negative-seed", ["seed=-1"], "seed=-1"),
        ("step-size-overflows", ["optim.lr_power=1000"], "optim.lr_power"),
        ("presets-swept-together", ["-m", "experiment=copy_fixed,copy_variable", "epochs=0.01"],
         "run one per launch"),
        ("jobs-sharing-a-directory", ["-m", "progress=true,false"], "would share the directory"),
        ("absurd-depth", ["model.num_layers=100000"], "model.num_layers"),
        # more memory than the run may hold: refused in the job, before anything is written
        ("training-graph-beyond-memory", ["dataset=linear", "K=1000000",
                                          "dataset.train_length=2000000", "max_memory=1"],
         "training graph of 1999999 steps"),
        ("estimator-windows-beyond-memory", ["method=adaptive", "method.num_windows=100000000"],
         "method.num_windows"),
        # impossible once the data is known: refused before anything is written
        ("tied-weights-on-vectors", ["dataset=linear", "model.tie_weights=true"],
         "model.tie_weights"),
        ("estimator-window-longer-than-data", ["dataset.train_length=24"], "method.window"),
        # from the verified files' token counts (atbptt.data.TOKENS), before any file is read: the
        # empty data_dir shows that the corpus need not be present
        ("eval-streams-of-one-token", [*ptb, "dataset.data_dir={tmp}/empty",
                                       "dataset.eval_batch_size=40000"], "dataset.eval_batch_size"),
        ("more-eval-streams-than-tokens", [*ptb, "dataset.data_dir={tmp}/empty",
                                           "dataset.eval_batch_size=80000"],
         "dataset.eval_batch_size"),
    ]
    if not torch.cuda.is_available():
        cases.append(("cuda-without-gpu", ["device=cuda"], "device=cuda"))
    return [pytest.param(argv, key, id=name) for name, argv, key in cases]


@pytest.mark.parametrize("argv,key", _bad_inputs())
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, argv, key):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a folder\n")
    corrupt = tmp_path / "corrupt" / "ptb"
    corrupt.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (corrupt / f"ptb.{split}.txt").write_text("not the penn treebank\n")
    before_repo = sorted(p.name for p in REPO.iterdir())
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    outputs = [] if any(a.startswith("hydra.") for a in argv) else [
        f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    started = time.monotonic()
    result = run([*TINY, *argv, *outputs], tmp_path, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert (len(lines) == 1 and lines[0].startswith("atbptt-run: error:")
            and key in lines[0]), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert time.monotonic() - started < 60
    assert sorted(p.name for p in REPO.iterdir()) == before_repo  # nothing written outside tmp_path
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    if key in ("dataset.data_dir", "checksum mismatch"):  # bad files: no corpus cache either
        assert not (tmp_path / "cache").exists()
    if not (tmp_path / "run").exists():  # refused before Hydra started: nothing written at all
        assert after == before
    else:  # refused once the data was known: Hydra's run dir stays empty (no .hydra/, no log)
        assert list((tmp_path / "run").iterdir()) == []
