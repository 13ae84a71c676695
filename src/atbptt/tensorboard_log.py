"""TensorBoard view of a run (``logger=tensorboard``), written to ``<run dir>/tb/``.

``metrics.csv`` stays the source of truth: the event files are a copy of its rows, made from
the CSV text itself, so every scalar holds the very number the CSV holds (stored as float64).
Each row becomes one scalar per non-empty column, tagged ``<section>/<column>``
(``loss/``, ``ppl/``, ``truncation/`` for K and lr, ``estimator/`` for β̂, δ̂, K̂(δ) under
both stand-ins and the audited true bias, ``time/``, ``progress/``), at global step =
``tokens`` (training tokens so far) and wall time = the run's start + ``train_time``, so
TensorBoard's *Relative* axis is training seconds. The gradient-norm profile behind a row
(``profiles/eval_NNNNN.csv``) becomes an image, ``estimator/profile``: log φ̂_k against the
lag with the fitted geometric tail and G_k.

A resumed run (or a run switched to ``logger=tensorboard`` later) rebuilds ``tb/`` from its
CSVs when it writes its first row, so the event files never hold rows that ``metrics.csv``
dropped. ``tensorboard --logdir <sweep dir>`` shows every run of a sweep side by side.
"""
from __future__ import annotations

import csv
import math
import shutil
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .config import ConfigError
from .metrics import read_json

TB_DIR = "tb"
MISSING = ("logger=tensorboard needs the tensorboard package: pip install 'atbptt[tensorboard]' "
           "(or pip install tensorboard)")
_SECTIONS = (("loss", lambda c: c.endswith("_loss")), ("ppl", lambda c: c.endswith("_ppl")),
             ("time", lambda c: c.endswith("_time")),
             ("truncation", lambda c: c in ("K", "lr")),
             ("progress", lambda c: c in ("eval", "epoch", "step", "tokens")))


def require() -> None:
    """Raise ConfigError (one line) unless TensorBoard's writer can be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"{MISSING} ({err})") from None


def tag(column: str) -> str:
    """The TensorBoard tag of a metrics.csv column (``estimator/`` unless listed above)."""
    section = next((name for name, match in _SECTIONS if match(column)), "estimator")
    return f"{section}/{column}"


def read_rows(path: Path) -> List[Dict[str, float]]:
    """metrics.csv as numbers, empty and non-numeric cells left out (``float`` reads the
    CSV's ``repr`` of a float exactly)."""
    with open(path, newline="") as f:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def _number(text: Optional[str]) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


class TensorBoardLog:
    """Copies the rows of ``<run_dir>/metrics.csv`` (and their profiles) into ``tb/``.

    ``sync()`` writes the rows not written yet; the first call of an instance starts ``tb/``
    afresh and writes them all. ``origin``: the run's start (Unix seconds) for wall times."""

    def __init__(self, run_dir: Path, origin: Optional[float] = None):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.origin = origin if origin is not None else _start_time(run_dir)
        shutil.rmtree(run_dir / TB_DIR, ignore_errors=True)  # rebuilt from the CSVs
        self.writer = SummaryWriter(str(run_dir / TB_DIR))
        self.written = 0

    def sync(self) -> int:
        """Write the rows of metrics.csv past those already written; returns how many."""
        rows = read_rows(self.run_dir / "metrics.csv")[self.written:]
        for row in rows:
            self._write_row(row)
        self.written += len(rows)
        self.writer.flush()
        return len(rows)

    def _write_row(self, row: Dict[str, float]) -> None:
        step = int(row["tokens"])
        walltime = self.origin + row.get("train_time", 0.0)
        for column, value in row.items():
            self.writer.add_scalar(tag(column), value, step, walltime=walltime, new_style=True,
                                   double_precision=True)
        profile = self.run_dir / "profiles" / f"eval_{int(row['eval']):05d}.csv"
        if "beta_hat" in row and profile.exists():
            self.writer.add_image("estimator/profile", profile_image(profile), step,
                                  walltime=walltime, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def _start_time(run_dir: Path) -> float:
    """The run's ``start_time`` from run.json (stable across resumes), else now."""
    info = read_json(run_dir / "run.json") or {}
    try:
        return datetime.fromisoformat(str(info["start_time"])).timestamp()
    except (KeyError, ValueError):
        return datetime.now().timestamp()


def profile_image(path: Path) -> np.ndarray:
    """The profile CSV drawn as an RGB image ``[H, W, 3]`` uint8: φ̂_k (log scale) with the
    fitted tail, and G_k, against the lag k."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = np.genfromtxt(path, delimiter=",", names=True)
    fig = Figure(figsize=(4.8, 3.2), dpi=100)
    ax = fig.add_subplot()
    positive = data["phi"] > 0
    ax.semilogy(data["lag"][positive], data["phi"][positive], label="φ̂_k (mean over windows)")
    tail = np.isfinite(data["tail"]) & (data["tail"] > 0)
    ax.semilogy(data["lag"][tail], data["tail"][tail], "--", label="geometric tail")
    ax.semilogy(data["lag"], np.where(data["cum"] > 0, data["cum"], np.nan), ":", label="G_k")
    beta = float(data["beta_hat"][0])
    ax.set(xlabel="lag k", title=f"β̂ = {beta:.4f}, τ = {int(data['tau'][0])}"
           if math.isfinite(beta) else "gradient-norm profile")
    ax.legend(fontsize=7)
    fig.tight_layout()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
