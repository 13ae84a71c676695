"""Sweeps on a real single-node SLURM (scripts/slurm_local.sh): Hydra's submitit_slurm launcher,
a requeued and a cancelled-then-resubmitted job that resume from their checkpoints, more jobs
than the node has cores, and the launcher pre-checks. Without accounting, submitit reports job
states as UNKNOWN: the tests assert on the run directories, and on ``scontrol``/``squeue``."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY, run_cli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = REPO / "scripts" / "slurm_local.sh"
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
BASE = [o for o in TINY if not o.startswith(("K=", "epochs=", "evals_per_epoch="))]
# long enough to be interrupted after its second checkpoint (~0.2-0.5 s per epoch)
LONG = [*BASE, "K=5", "epochs=40", "evals_per_epoch=1", "progress=true"]
TIME_COLUMNS = ("train_time", "wall_time", "estimation_time", "diagnostic_time")


def _why_not() -> str | None:
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch")
               if shutil.which(c, path=SBIN) is None]
    if missing:
        return (f"SLURM not installed ({', '.join(missing)} missing): "
                "apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        return "the local SLURM runs its daemons as root; these tests need root to start it"
    return None


def _script(*args: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="session")
def slurm():
    """Environment (``SLURM_CONF``) of a running local cluster: started through the script
    unless already running (as in CI), and then stopped at the end of the session."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "PATH": SBIN}
    conf = _script("env", env=env).stdout.strip().split("=", 1)[1]
    started = _script("status", env=env).returncode != 0
    if started:
        res = _script("start", env=env)
        assert res.returncode == 0, res.stderr + res.stdout
    yield {**env, "SLURM_CONF": conf}
    if started:
        res = _script("stop", env=env)
        assert res.returncode == 0 and "stopped" in res.stdout, res.stderr


@pytest.fixture
def launched():
    """Launcher processes a test starts; any still running when it ends is killed (by pid)."""
    procs: list = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _sweep(env, sweep_dir: Path, *overrides: str) -> list:
    return ["-m", "hydra/launcher=submitit_slurm", f"hydra.sweep.dir={sweep_dir}", *overrides]


def _rows(run_dir: Path, drop_time: bool = True) -> list:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if not (drop_time and k in TIME_COLUMNS)}
                for r in csv.DictReader(f)]


def _run_dirs(sweep_dir: Path) -> list:
    return sorted(p.parent for p in sweep_dir.glob("*/run.json"))


def _jobs(sweep_dir: Path) -> list:
    """SLURM job ids of a sweep: submitit's folders ``<job>`` or ``<array job>_<task>``."""
    names = [p.name for p in (sweep_dir / ".submitit").iterdir()
             if re.fullmatch(r"\d+(_\d+)?", p.name)]
    return sorted(n for n in names if "_" in n) or sorted(names)


def _scontrol_job(job: str, env) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True,
                         env=env, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _wait(predicate, timeout: float, what: str, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the launcher exited ({proc.returncode}) before {what}: {err[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


# ------------------------------------------------------------------------------ the script
def test_script_refuses_in_one_line_without_the_packages(tmp_path):
    res = subprocess.run(["/bin/bash", str(SCRIPT), "start"], capture_output=True, text=True,
                         env={"PATH": str(tmp_path), "ATBPTT_SLURM_DIR": str(tmp_path / "s")})
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "apt-get install -y slurm-wlm munge" in res.stderr
    assert not (tmp_path / "s").exists()
    res = _script("restart")
    assert res.returncode == 2 and "allowed: start, stop, status, env" in res.stderr


def test_script_start_is_idempotent_and_the_cluster_runs_jobs(slurm, tmp_path):
    res = _script("start", env=slurm)
    assert res.returncode == 0 and "already running" in res.stdout
    assert _script("status", env=slurm).returncode == 0
    out = subprocess.run(["srun", "hostname"], capture_output=True, text=True, env=slurm,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == os.uname().nodename.split(".")[0]


# ------------------------------------------------------------------------------ sweeps
def test_submitit_slurm_sweep_writes_every_run_and_aggregates(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli(_sweep(slurm, sweep, *BASE, "epochs=1", "evals_per_epoch=2", "K=4,5,6"),
                  cwd=tmp_path, env=slurm)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = _run_dirs(sweep)
    assert len(runs) == 3
    for run in runs:
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "finished" and not (run / "checkpoint.pt").exists()
        assert (run / ".hydra" / "config.yaml").exists()
        assert [int(r["eval"]) for r in _rows(run)] == [0, 1, 2]
    assert sorted(json.loads((r / "run.json").read_text())["K"] for r in runs) == [4, 5, 6]
    jobs = _jobs(sweep)
    assert len(jobs) == 3  # one array task per job, each run by the scheduler
    for job in jobs:
        assert (sweep / ".submitit" / job / f"{job}_0_result.pkl").exists()
        state = _scontrol_job(job, slurm)
        for _ in range(60):  # the result is written before SLURM marks the job ended
            if state["JobState"] not in ("RUNNING", "COMPLETING"):
                break
            time.sleep(1)
            state = _scontrol_job(job, slurm)
        assert state["JobState"] == "COMPLETED" and state["Partition"] == "debug"
    out = tmp_path / "agg"
    agg = subprocess.run([sys.executable, str(REPO / "scripts" / "aggregate.py"), "--runs",
                          str(sweep), "--out", str(out)], capture_output=True, text=True)
    assert agg.returncode == 0, agg.stderr
    with open(out / "default" / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert sorted(int(float(r["K"])) for r in summary) == [4, 5, 6]
    assert all(r["n_finished"] == "1" and float(r["test_ppl_at_best_mean"]) > 1 for r in summary)
    with open(out / "default" / "runs.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 9


def test_more_jobs_than_cores_queue_and_complete(slurm, tmp_path, launched):
    node = subprocess.run(["scontrol", "show", "node"], capture_output=True, text=True,
                          env=slurm, check=True).stdout
    cores = int(re.search(r"CPUTot=(\d+)", node).group(1))
    seeds = ",".join(str(s) for s in range(cores + 2))
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "atbptt.cli", *_sweep(
        slurm, sweep, *BASE, "K=5", "epochs=1", "evals_per_epoch=1", f"seed={seeds}",
        "hydra.launcher.cpus_per_task=1")], cwd=tmp_path, env={**slurm, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    launched.append(proc)
    most_running, queued = 0, False
    while proc.poll() is None:
        states = subprocess.run(["squeue", "-h", "-o", "%T %r"], capture_output=True, text=True,
                                env=slurm).stdout.split("\n")
        running = sum(s.startswith("RUNNING") for s in states)
        most_running = max(most_running, running)
        queued |= running == cores and any(s.startswith("PENDING") for s in states)
        time.sleep(0.2)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert queued and most_running == cores  # the node's cores were full and jobs waited
    runs = _run_dirs(sweep)
    assert len(runs) == cores + 2
    assert all(json.loads((r / "run.json").read_text())["status"] == "finished" for r in runs)


# ------------------------------------------------------------------------------ preemption
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The LONG job's metrics, uninterrupted, run here as a one-job sweep (one thread)."""
    folder = tmp_path_factory.mktemp("reference")
    quiet = [o for o in LONG if not o.startswith("progress=")]
    res = run_cli(["-m", *quiet, "progress=false", f"hydra.sweep.dir={folder / 'sweep'}"],
                  cwd=folder)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = _run_dirs(folder / "sweep")
    return _rows(run)


def _launch_and_wait_for_checkpoint(slurm, sweep: Path, launched: list):
    """Start the LONG job on SLURM; return (launcher process, run dir, SLURM job id, the
    metrics rows written by its second checkpoint, time columns included)."""
    cmd = [sys.executable, "-m", "atbptt.cli", *_sweep(slurm, sweep, *LONG)]
    proc = subprocess.Popen(cmd, cwd=sweep.parent, env={**slurm, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    launched.append(proc)

    def checkpointed():
        runs = _run_dirs(sweep)
        if runs and (runs[0] / "checkpoint.pt").exists() and len(_rows(runs[0])) >= 3:
            return runs[0]
    run = _wait(checkpointed, 300, "the job's second checkpoint", proc)
    (job,) = _jobs(sweep)
    return proc, cmd, run, job, _rows(run, drop_time=False)


def _checkpointed_rows(run: Path, rows: list) -> list:
    """The rows of ``rows`` that the run's checkpoint covers: a job interrupted between
    writing an evaluation's row and saving that evaluation's checkpoint redoes the row."""
    import torch
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    evals = ckpt["progress"]["evals"]
    assert 0 < evals <= len(rows)
    return rows[:evals]


def _assert_resumed(run: Path, before: list, reference: list, sweep: Path) -> None:
    after = _rows(run, drop_time=False)
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert len(before) < len(after), "the job ended before it was interrupted"
    assert after[:len(before)] == before  # rows kept as written: resumed, not restarted
    assert _rows(run) == reference  # identical to the uninterrupted run, time aside
    logs = "".join(p.read_text(errors="replace") for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "resuming" in logs


def test_requeued_job_resumes_from_its_checkpoint(slurm, tmp_path, reference, launched):
    sweep = tmp_path / "sweep"
    proc, _, run, job, before = _launch_and_wait_for_checkpoint(slurm, sweep, launched)
    subprocess.run(["scontrol", "requeue", job], env=slurm, check=True)
    # a requeued job waits two minutes (BeginTime) before it may start again: release it now
    _wait(lambda: _scontrol_job(job, slurm)["JobState"] == "PENDING", 60, "the requeue")
    before = _checkpointed_rows(run, before)
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], env=slurm, check=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert _scontrol_job(job, slurm)["Restarts"] == "1"
    _assert_resumed(run, before, reference, sweep)


def test_cancelled_job_resubmitted_by_the_same_command_resumes(slurm, tmp_path, reference,
                                                               launched):
    sweep = tmp_path / "sweep"
    proc, cmd, run, job, before = _launch_and_wait_for_checkpoint(slurm, sweep, launched)
    subprocess.run(["scancel", job], env=slurm, check=True)
    _wait(lambda: _scontrol_job(job, slurm)["JobState"] == "CANCELLED", 60, "the cancellation")
    proc.send_signal(signal.SIGINT)  # the launcher would wait on a job that has no result
    proc.communicate(timeout=60)
    assert json.loads((run / "run.json").read_text())["status"] != "finished"
    assert (run / "checkpoint.pt").exists()
    before = _checkpointed_rows(run, before)
    res = subprocess.run(cmd, cwd=sweep.parent, env={**slurm, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_resumed(run, before, reference, sweep)


# ------------------------------------------------------------------------------ pre-checks
def test_launcher_precheck_names_a_wrong_partition_and_a_missing_scheduler(slurm, monkeypatch):
    from atbptt import cluster

    launcher = {"_target_": cluster.SLURM_LAUNCHER, "partition": None}
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    monkeypatch.setenv("PATH", slurm["PATH"])
    assert cluster.check_launcher({"hydra": {"launcher": launcher}}) is None
    assert cluster.check_slurm("debug") is None
    assert cluster.check_slurm("gpu") == ("hydra.launcher.partition=gpu: unknown partition; "
                                          "allowed: debug")
    monkeypatch.setenv("SLURM_CONF", "/nonexistent/slurm.conf")
    assert cluster.check_slurm().endswith("SLURM_CONF=/nonexistent/slurm.conf is not a file; "
                                          "point it at the cluster's slurm.conf")
    monkeypatch.setenv("PATH", "/nonexistent")
    message = cluster.check_launcher({"hydra": {"launcher": launcher}})
    assert message.startswith("hydra/launcher=submitit_slurm: no SLURM scheduler on this machine")
    assert cluster.check_launcher({"hydra": {"launcher": {"_target_": "x.JoblibLauncher"}}}) is None


@pytest.mark.parametrize("case", ["wrong partition", "no scheduler"])
def test_atbptt_run_refuses_a_bad_slurm_sweep_in_one_line_and_writes_nothing(slurm, tmp_path, case):
    sweep = tmp_path / "sweep"
    env = dict(slurm)
    extra = ["hydra.launcher.partition=gpu"] if case == "wrong partition" else []
    if case == "no scheduler":
        env["PATH"] = os.pathsep.join(p for p in slurm["PATH"].split(os.pathsep)
                                      if not (Path(p) / "sbatch").exists())
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    res = run_cli(_sweep(env, sweep, *BASE, "K=4,5", *extra), cwd=tmp_path, env=env)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    expected = ("partition=gpu: unknown partition" if case == "wrong partition"
                else "no SLURM scheduler on this machine")
    assert expected in lines[0] and not sweep.exists()
