"""What the analysis scripts share: the columns of runs.csv, the label and the order of a method
setting, the metric of a task, and an experiment's aggregated tables read back.

Used by aggregate.py (run_dirs.py, experiment_csv.py) and figures.py (figure_panels.py,
markdown_tables.py). CSV/JSON only: never imports the training package or torch.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

# ----------------------------------------------------------------------------- runs.csv
ID_COLUMNS = ["experiment", "dataset", "task", "method", "K", "delta", "seed", "setting",
              "status", "true_rho", "scale", "init", "grad_norm_bound", "run_dir"]
METRIC_COLUMNS = ["eval", "epoch", "step", "tokens", "train_time", "wall_time", "estimation_time",
                  "train_loss", "valid_loss", "test_loss", "valid_ppl", "test_ppl", "K_in_use",
                  "lr", "beta_hat", "delta_hat", "K_hat_1.0", "K_hat_0.9", "K_hat_0.5",
                  "K_hat_0.1", "true_rel_bias", "trunc_mean", "trunc_max", "grad_rel_var",
                  # both stand-ins for ‖E ĝ_K‖ (NOTES §3 step 2), logged from the same profiles
                  *(f"delta_hat_{b}" for b in ("grad", "norm_sum")),
                  *(f"K_hat_{d}_{b}" for b in ("grad", "norm_sum")
                    for d in ("1.0", "0.9", "0.5", "0.1"))]
STANDINS = ("grad", "norm_sum")
STATUSES = ["finished", "diverged", "failed", "interrupted", "running"]


def task_metric(task: str) -> str:
    """'ppl' for classification (language models, copy), 'loss' for regression (linear, VAR)."""
    return "ppl" if task == "classification" else "loss"


# ----------------------------------------------------------------------------- settings
# the paper's table order: fixed K, then adaptive δ, then ARTBP (not in the paper)
METHOD_RANK = {"fixed": 0, "adaptive": 1, "artbp": 2}


def setting_label(method: str, K: int, delta: float, artbp: dict | None = None) -> str:
    """'K=10', 'δ=0.1', or for ARTBP (K its mean truncation length) 'ARTBP c=1/10' (constant
    cut probability per draw point) or 'ARTBP α=4, mean 10' (the length-dependent schedule)."""
    if method == "fixed":
        return f"K={K}"
    if method != "artbp":
        return f"δ={delta:g}"
    params = artbp or {}
    stride = int(params.get("stride") or 1)
    if params.get("schedule") == "poly":
        label = f"ARTBP α={float(params.get('alpha') or 4.0):g}, mean {K}"
    else:
        label = f"ARTBP c=1/{K / stride:g}"
    return label + (f", every {stride} steps" if stride > 1 else "")


def setting_order(label: str) -> tuple:
    """Fixed K ascending, then adaptive δ descending, then ARTBP by mean length:
    'K=5' < 'K=10' < 'δ=0.9' < 'δ=0.1' < 'ARTBP c=1/10' < 'ARTBP c=1/20'."""
    artbp = re.match(r"ARTBP (?:c=1/|α=[0-9.]+, mean )([0-9.]+)", label)
    if artbp:
        return (METHOD_RANK["artbp"], float(artbp.group(1)), label)
    match = re.match(r"(K|δ)=([0-9.eE+-]+)", label)
    if not match:
        return (len(METHOD_RANK), 0.0, label)
    value = float(match.group(2))
    return ((METHOD_RANK["fixed"], value, label) if match.group(1) == "K" else
            (METHOD_RANK["adaptive"], -value, label))


def sort_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """Fixed K ascending, then adaptive delta descending (the paper's table order), then ARTBP
    by mean length."""
    order = frame.assign(_method=frame["method"].map(METHOD_RANK).fillna(len(METHOD_RANK)),
                         _delta=-frame["delta"].fillna(0), _K=frame["K"],
                         _rho=frame["true_rho"].astype(float).fillna(0))
    order = order.sort_values(["experiment", "_rho", "_method", "_delta", "_K", "setting"])
    return order.drop(columns=["_method", "_delta", "_K", "_rho"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- reading back
def load_experiment(folder: Path) -> dict:
    """The aggregated tables of one experiment folder."""
    runs = pd.read_csv(folder / "runs.csv")
    summary = pd.read_csv(folder / "summary.csv")
    profiles_path = folder / "profiles.csv"
    profiles = pd.read_csv(profiles_path) if profiles_path.is_file() else pd.DataFrame()
    provenance_path = folder / "provenance.json"
    provenance = json.loads(provenance_path.read_text()) if provenance_path.is_file() else {}
    task = str(summary["task"].iloc[0]) if "task" in summary and len(summary) else "classification"
    return {"name": folder.name, "folder": folder, "runs": runs, "summary": summary,
            "profiles": profiles, "provenance": provenance, "task": task,
            "metric": task_metric(task)}


def scale_label(exp: dict) -> str:
    scales = exp["provenance"].get("scale") or sorted(exp["runs"]["scale"].dropna().unique())
    return "; ".join(map(str, scales)) or "scale unknown"
