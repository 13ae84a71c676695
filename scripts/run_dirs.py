"""Reading one run directory (run.json, .hydra/config.yaml, metrics.csv, profiles/) for
aggregate.py: its identifiers and provenance, its evaluations, its last gradient-norm profile.

A file that cannot be read as a run's raises ``MalformedRun`` (one line saying why), except a
profile, which falls back to the one before it. CSV/JSON/YAML only: never imports the training
package or torch.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis_common import METRIC_COLUMNS

# the data python -m atbptt.floor measures (results/copy_floor.csv): the presets' sizes, data seed 0
DEFAULT_COPY_DATA = {"seed": 0, "train_length": 4000, "eval_length": 1000, "batch_size": 64,
                     "eval_batch_size": 64}


# ----------------------------------------------------------------------------- reading runs
def find_run_dirs(roots: list[Path]) -> list[Path]:
    """Every directory under the roots that holds a run.json (sorted, unique)."""
    found = set()
    for root in roots:
        if (root / "run.json").is_file():
            found.add(root.resolve())
        found.update(p.parent.resolve() for p in root.rglob("run.json"))
    return sorted(found)


def _config(run_dir: Path) -> dict:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _first(*values):
    """The first value that is not None (run.json first, then config.yaml)."""
    for value in values:
        if value is not None:
            return value
    return None


def read_meta(run_dir: Path) -> dict:
    """Run identifiers and provenance: run.json, falling back to .hydra/config.yaml."""
    with open(run_dir / "run.json") as f:
        meta = json.load(f)
    cfg = _config(run_dir)
    dataset_cfg = cfg.get("dataset") or {}
    method_cfg = cfg.get("method") or {}
    meta["experiment"] = _first(meta.get("experiment"), cfg.get("experiment"), "default")
    meta["dataset"] = _first(meta.get("dataset"), dataset_cfg.get("name"))
    meta["method"] = _first(meta.get("method"), method_cfg.get("name"), "fixed")
    meta["K"] = int(_first(meta.get("K"), cfg.get("K")))
    meta["delta"] = float(_first(meta.get("delta"), cfg.get("delta"), math.nan))
    meta["seed"] = int(_first(meta.get("seed"), cfg.get("seed"), 0))
    meta["epochs_budget"] = _first(meta.get("epochs_budget"), cfg.get("epochs"))
    meta["max_time"] = _first(meta.get("max_time"), cfg.get("max_time"))
    if meta["method"] == "artbp" and not meta.get("artbp"):  # parameters from config.yaml
        meta["artbp"] = {"schedule": method_cfg.get("artbp_schedule", "constant"),
                         "alpha": method_cfg.get("artbp_alpha"),
                         "stride": method_cfg.get("artbp_stride", 1)}
    if meta.get("true_rho") is None and meta["dataset"] in ("linear", "var"):
        meta["true_rho"] = dataset_cfg.get("rho")
    if not meta.get("scale"):  # describe the scale from what the run recorded
        budget = f"{float(meta['epochs_budget']):g} epochs" if meta["epochs_budget"] else ""
        if meta["max_time"]:
            budget += f"{' or ' if budget else ''}{float(meta['max_time']):g} s of training"
        meta["scale"] = (f"{meta.get('model', 'model ?')}, budget {budget}, "
                         f"{meta.get('device', '?')}")
    model_cfg = cfg.get("model") or {}
    # runs from before model.init / method.grad_norm_bound existed used PyTorch's defaults
    # and the averaged-gradient stand-in
    meta["init"] = _first(meta.get("init"), model_cfg.get("init"), "torch")
    meta["grad_norm_bound"] = _first(meta.get("grad_norm_bound"),
                                     method_cfg.get("grad_norm_bound"), "grad")
    meta["default_copy_data"] = all(dataset_cfg.get(k, v) == v
                                    for k, v in DEFAULT_COPY_DATA.items())
    meta.setdefault("status", "failed")
    meta.setdefault("task", None)
    meta["run_dir"] = display_path(run_dir)
    return meta


def display_path(path: Path) -> str:
    """Relative to the working directory when below it (committed tables stay portable)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class MalformedRun(ValueError):
    """A run directory whose files cannot be read as a run's; the message says why (one line)."""


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.csv with the per-eval K renamed K_in_use; empty frame if missing or empty.

    Raises ``MalformedRun`` if the file is not UTF-8, a row has more or fewer fields than the
    header, or the header lacks ``eval``."""
    path = run_dir / "metrics.csv"
    try:
        frame = pd.read_csv(path, encoding="utf-8", encoding_errors="strict", on_bad_lines="error",
                            skip_blank_lines=True)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        frame = pd.DataFrame()
    except UnicodeDecodeError as error:
        raise MalformedRun(f"metrics.csv is not UTF-8 text (byte {error.start})") from None
    except (pd.errors.ParserError, ValueError, OSError) as error:
        raise MalformedRun(f"metrics.csv cannot be read ({one_line(error)})") from None
    if len(frame.columns) and "eval" not in frame.columns:
        raise MalformedRun("metrics.csv has no 'eval' column (not a metrics file)")
    frame = frame.rename(columns={"K": "K_in_use"})
    for column in METRIC_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame[METRIC_COLUMNS]


def read_last_profile(run_dir: Path) -> pd.DataFrame | None:
    """The profile of the last evaluation that wrote one (profiles/eval_NNNNN.csv)."""
    paths = sorted((run_dir / "profiles").glob("eval_*.csv"))
    for path in reversed(paths):
        try:
            frame = pd.read_csv(path, encoding="utf-8", encoding_errors="strict")
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError):
            continue  # an unreadable profile: the one before it
        frame.insert(0, "eval", int(path.stem.split("_")[-1]))
        return frame
    return None


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


# ----------------------------------------------------------------------------- run identity
def infer_task(meta: dict, metrics: pd.DataFrame) -> str:
    """run.json's task, else regression for linear/VAR or for losses without perplexities."""
    if meta.get("task") in ("classification", "regression"):
        return meta["task"]
    if meta.get("dataset") in ("linear", "var"):
        return "regression"
    has_ppl = metrics[["valid_ppl", "test_ppl"]].notna().any().any()
    has_loss = metrics["valid_loss"].notna().any()
    return "regression" if has_loss and not has_ppl else "classification"
