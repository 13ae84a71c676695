"""Run outputs: ``metrics.csv`` (columns declared up front, ``\\n`` line endings), ``run.json``,
profile CSVs; and the check of the rows a resumed run keeps."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .errors import FileWriteError, MetricsDamage
from .files import append_line, atomic_write

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
    """Appends one row per evaluation (``\n`` line endings throughout); ``rows_for_resume``
    checks the rows a checkpoint relies on, ``truncate`` keeps them and drops the rest."""

    def __init__(self, path: Path):
        self.path = path

    def rows_for_resume(self, rows: int) -> List[List[str]]:
        """The first ``rows`` rows, each checked: as many fields as the header, ``eval`` equal
        to its index, numbers (or empty) in every cell. Blank lines are skipped (nothing is
        lost); rows past ``rows`` were written after the checkpoint and are not read. Raises
        ``MetricsDamage`` saying what is wrong (missing file, bad header, a damaged or
        missing row)."""
        if rows == 0:
            return []
        try:
            text = self.path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise MetricsDamage(
                f"is missing, and the checkpoint follows {rows} of its rows") from None
        except OSError as err:  # a directory in its place, no permission
            raise MetricsDamage(f"cannot be read ({err.strerror or err})") from None
        except UnicodeDecodeError as err:
            raise MetricsDamage(f"is not UTF-8 text (byte {err.start})") from None
        lines = text.replace("\r\n", "\n").split("\n")
        header = lines[0].split(",")
        if not header or header != list(COLUMNS[:len(header)]) or len(header) < COLUMNS.index("K"):
            raise MetricsDamage(f"has an unknown header ({lines[0][:60]!r}...)")
        kept: List[List[str]] = []
        for number, line in enumerate(lines[1:], start=2):
            if len(kept) == rows:
                break
            if not line.strip():
                continue  # a blank line holds no row
            fields = next(csv.reader([line]))
            where = f"row {len(kept)} (line {number})"
            if len(fields) != len(header):
                raise MetricsDamage(f"{where} has {len(fields)} fields, the header {len(header)}")
            bad = [c for c, v in zip(header, fields) if v and not _is_number(v)]
            if bad:
                raise MetricsDamage(f"{where} has a value that is not a number in '{bad[0]}'")
            if fields[0] != str(len(kept)):
                raise MetricsDamage(f"{where} is evaluation {fields[0] or '(empty)'}, expected "
                                    f"{len(kept)} (a row is missing or repeated)")
            kept.append(fields + [""] * (len(COLUMNS) - len(header)))
        if len(kept) < rows:
            raise MetricsDamage(f"has {len(kept)} rows and the checkpoint follows {rows} "
                                "(rows were removed)")
        return kept

    def truncate(self, rows: int) -> None:
        """Keep the header and the first ``rows`` rows (a fresh file when rows == 0); raises
        ``MetricsDamage`` (before changing anything) if they are not all there and sound,
        ``files.FileWriteError`` if the file cannot be written."""
        kept = self.rows_for_resume(rows)
        atomic_write(self.path, "".join(_line(r) for r in [list(COLUMNS), *kept]))

    def append(self, row: Dict[str, object]) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"unknown metrics columns {sorted(unknown)}")
        append_line(self.path, _line([_fmt(row.get(c)) for c in COLUMNS])[:-1])


def _line(fields: List[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue()


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def write_profile(path: Path, phi: np.ndarray, cum: np.ndarray, tail: np.ndarray,
                  beta_hat: float, tau: int) -> None:
    """φ̂_k, the cumulative-gradient norm and the fitted geometric tail for one evaluation.

    ``profiles/`` is created inside an existing run directory only (a removed run directory
    is not made again); ``files.FileWriteError`` if it cannot be written."""
    try:
        path.parent.mkdir(exist_ok=True)
    except OSError as err:
        raise FileWriteError(path.parent, err) from None
    lines = ["lag,phi,cum,tail,beta_hat,tau"]
    lines += [f"{k},{_fmt(float(p))},{_fmt(float(c))},{_fmt(float(t))},"
              f"{_fmt(float(beta_hat))},{tau}"
              for k, (p, c, t) in enumerate(zip(phi, cum, tail))]
    atomic_write(path, "\n".join(lines) + "\n")


def write_json(path: Path, payload: Dict[str, object]) -> None:
    """Replace ``path`` by ``payload`` as JSON; ``files.FileWriteError`` if it cannot be written."""
    atomic_write(path, json.dumps(payload, indent=2, default=str) + "\n")


def read_json(path: Path) -> Optional[Dict[str, object]]:
    """The JSON object in ``path``; None if the file is missing, damaged or not an object."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


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


