"""Run outputs: ``metrics.csv`` (columns declared up front), ``run.json``, profile CSVs."""
from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

DELTAS = (1.0, 0.9, 0.5, 0.1)  # K_hat is logged for these delta (NOTES §3)
GRAD_NORM_BOUNDS = ("grad", "norm_sum")  # config.GradNormBound values
TIME_COLUMNS = ("train_time", "wall_time", "estimation_time", "diagnostic_time")
COLUMNS = (
    "eval", "epoch", "step", "tokens", "train_time", "wall_time", "estimation_time",
    "train_loss", "valid_loss", "test_loss", "valid_ppl", "test_ppl", "K", "lr",
    "beta_hat", "delta_hat", *(f"K_hat_{d}" for d in DELTAS), "true_rel_bias",
    # δ̂ of the K in use and K̂(δ) under each stand-in for ‖E ĝ_K‖ (NOTES §3 step 2);
    # delta_hat and K_hat_* above repeat the run's own choice (method.grad_norm_bound)
    *(f"delta_hat_{b}" for b in GRAD_NORM_BOUNDS),
    *(f"K_hat_{d}_{b}" for b in GRAD_NORM_BOUNDS for d in DELTAS),
    # method=artbp (empty otherwise): segment lengths since the last evaluation (mean, max) and
    # the gradient's relative variance E||g - g_W||^2 / ||g_W||^2 on estimation windows
    "trunc_mean", "trunc_max", "grad_rel_var",
    # seconds of diagnostics (logged estimates, audit, ARTBP variance), not part of train_time;
    # estimation_time is only the K updates of an adaptive run, which train_time includes
    "diagnostic_time",
)


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    return str(value)


class MetricsWriter:
    """Appends one row per evaluation; ``truncate`` drops rows past a checkpoint on resume."""

    def __init__(self, path: Path):
        self.path = path

    def truncate(self, rows: int) -> None:
        """Keep the header and the first ``rows`` rows (a fresh file when rows == 0)."""
        kept: List[str] = []
        if rows > 0 and self.path.exists():
            kept = self.path.read_text().splitlines()[1:rows + 1]
            if len(kept) != rows:
                raise RuntimeError(f"{self.path} has {len(kept)} rows, the checkpoint expects {rows}")
        _atomic_write(self.path, "\n".join([",".join(COLUMNS), *kept]) + "\n")

    def append(self, row: Dict[str, object]) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown metrics columns {sorted(unknown)}")
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c)) for c in COLUMNS])
            f.flush()
            os.fsync(f.fileno())


def write_profile(path: Path, phi: np.ndarray, cum: np.ndarray, tail: np.ndarray,
                  beta_hat: float, tau: int) -> None:
    """φ̂_k, the cumulative-gradient norm and the fitted geometric tail for one evaluation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["lag,phi,cum,tail,beta_hat,tau"]
    lines += [f"{k},{_fmt(float(p))},{_fmt(float(c))},{_fmt(float(t))},{_fmt(float(beta_hat))},{tau}"
              for k, (p, c, t) in enumerate(zip(phi, cum, tail))]
    _atomic_write(path, "\n".join(lines) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, payload: Dict[str, object]) -> None:
    _atomic_write(path, json.dumps(payload, indent=2, default=str) + "\n")


def read_json(path: Path) -> Optional[Dict[str, object]]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(where: Path) -> str:
    """The commit of the checkout holding this package.

    Outside a git checkout (a regular install, or a copy of the tree without `.git`, as on a
    remote GPU machine) it is the environment variable ``ATBPTT_GIT_COMMIT`` when set, with
    ``"(declared)"`` appended so a reader knows it was not read from git; else ``"unknown"``.
    """
    declared = os.environ.get("ATBPTT_GIT_COMMIT", "").strip()
    fallback = f"{declared} (declared)" if declared else "unknown"
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=10)
        if out.returncode != 0:
            return fallback
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return fallback


def hardware() -> Dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"hostname": socket.gethostname(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "platform": platform.platform()}


