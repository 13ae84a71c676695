"""The tables aggregate.py writes for one experiment into ``<out>/<experiment>/``: runs.csv,
summary.csv (one row per method setting, 'best' as NOTES §4), profiles.csv, standins.csv (audited
runs) and provenance.json; aggregate.py's docstring describes them.

CSV/JSON only: never imports the training package or torch.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis_common import ID_COLUMNS, STANDINS, STATUSES, sort_settings, task_metric
from committed_tables import merge_frames, merge_provenance, read_committed
from run_dirs import read_last_profile

PROFILE_COLUMNS = ["lag", "phi", "cum", "tail", "beta_hat", "tau"]
BEST_COLUMNS = ["has_best", "final_K", "beta_hat", "final_epoch", "final_train_time",
                "best_valid_ppl", "test_ppl_at_best", "best_valid_loss", "test_loss_at_best",
                "epoch_at_best", "train_time_at_best", "segment_length", "grad_rel_var"]


# ----------------------------------------------------------------------------- summary
def integer_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Counters stay integers in the CSV even beside the empty row of a failed run."""
    for column in ["eval", "step", "tokens", "K_in_use", "K_hat_1.0", "K_hat_0.9", "K_hat_0.5",
                   "K_hat_0.1", "trunc_max"]:
        values = frame[column].dropna()
        if np.isfinite(values).all() and (values == values.round()).all():
            frame[column] = frame[column].round().astype("Int64")
    return frame


def standin_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting, how the two stand-ins' δ̂ of the K in use compare with the audited true
    relative bias (``true_rel_bias``, method.audit), and which K̂(δ) each picks (medians)."""
    rows = []
    audited = runs[np.isfinite(pd.to_numeric(runs["true_rel_bias"], errors="coerce"))]
    for setting, group in audited.groupby("setting", sort=False):
        row = {"setting": setting, "n_audited": len(group),
               "true_rel_bias_median": group["true_rel_bias"].median()}
        for b in STANDINS:
            est = group[f"delta_hat_{b}"]
            row[f"share_{b}_bounds_true"] = float((est >= group["true_rel_bias"]).mean())
            row[f"delta_hat_{b}_median"] = est.median()
            for d in ("0.9", "0.5", "0.1"):
                row[f"K_hat_{d}_{b}_median"] = group[f"K_hat_{d}_{b}"].median()
        rows.append(row)
    return pd.DataFrame(rows)


def _finite(series: pd.Series) -> pd.Series:
    values = pd.to_numeric(series, errors="coerce")
    return values[np.isfinite(values)]


def best_of_run(run: pd.DataFrame, task: str) -> dict:
    """Best validation eval of one run and the metrics read at it (NOTES §4)."""
    metric = task_metric(task)
    valid = _finite(run[f"valid_{metric}"])
    out = {"final_K": _last(run["K_in_use"]), "beta_hat": _finite(run["beta_hat"]).mean(),
           "final_epoch": _last(run["epoch"]), "final_train_time": _last(run["train_time"]),
           "segment_length": _finite(run["trunc_mean"]).mean(),  # ARTBP only
           "grad_rel_var": _finite(run["grad_rel_var"]).mean()}
    if valid.empty:
        return out
    row = run.loc[valid.idxmin()]
    out.update({"has_best": True, "best_valid_ppl": row["valid_ppl"],
                "test_ppl_at_best": row["test_ppl"], "best_valid_loss": row["valid_loss"],
                "test_loss_at_best": row["test_loss"],
                "epoch_at_best": row["epoch"], "train_time_at_best": row["train_time"]})
    if task != "classification":
        out["best_valid_ppl"] = out["test_ppl_at_best"] = np.nan
    return out


def _last(series: pd.Series) -> float:
    values = _finite(series)
    return values.iloc[-1] if len(values) else np.nan


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per method setting: counts, best valid / test at best (mean, sd over seeds)."""
    per_run = []
    for run_dir, run in runs.groupby("run_dir", sort=False):
        first = run.iloc[0]
        per_run.append({**{c: first[c] for c in ID_COLUMNS}, **best_of_run(run, first["task"])})
    per_run = pd.DataFrame(per_run).reindex(columns=ID_COLUMNS + BEST_COLUMNS)
    floors = runs.groupby("run_dir", sort=False)[["valid_ppl_floor", "test_ppl_floor"]].first()
    per_run = per_run.join(floors, on="run_dir")
    per_run["delta_key"] = per_run["delta"].where(per_run["method"] == "adaptive", np.nan)
    per_run["rho_key"] = per_run["true_rho"].astype(float).round(6)
    rows = []
    keys = ["experiment", "method", "K", "delta_key", "rho_key", "setting"]
    for key, group in per_run.groupby(keys, sort=False, dropna=False):
        rows.append(_summary_row(dict(zip(keys, key)), group))
    summary = pd.DataFrame(rows).rename(columns={"delta_key": "delta"}).drop(columns="rho_key")
    return sort_settings(summary)


def _summary_row(key: dict, group: pd.DataFrame) -> dict:
    status = group["status"].value_counts()
    used = group[group["has_best"].eq(True)]  # NaN (no finite validation value) is not True
    row = {**key, "dataset": group["dataset"].iloc[0], "task": group["task"].iloc[0],
           "n_seeds": len(group), **{f"n_{s}": int(status.get(s, 0)) for s in STATUSES},
           "n_in_mean": len(used)}
    for column in ["best_valid_ppl", "test_ppl_at_best", "best_valid_loss", "test_loss_at_best"]:
        row[f"{column}_mean"] = used[column].mean()
        row[f"{column}_sd"] = used[column].std(ddof=1)  # NaN for a single seed
    for column in ["epoch_at_best", "train_time_at_best"]:
        row[f"{column}_mean"] = used[column].mean()
    row["final_K_mean"] = group["final_K"].mean()
    row["beta_hat_mean"] = group["beta_hat"].mean()
    row["segment_length_mean"] = group["segment_length"].mean()  # ARTBP: realised mean length
    row["grad_rel_var_mean"] = group["grad_rel_var"].mean()  # ARTBP: over evaluations and seeds
    row["final_epoch_mean"] = group["final_epoch"].mean()
    row["true_rho"] = group["true_rho"].iloc[0]
    row["scale"] = group["scale"].iloc[0]
    for split in ("valid", "test"):
        row[f"{split}_ppl_floor"] = group[f"{split}_ppl_floor"].iloc[0]
    return row


def profile_rows(meta: dict) -> pd.DataFrame | None:
    profile = read_last_profile(Path(meta["run_dir"]))
    if profile is None:
        return None
    for column in PROFILE_COLUMNS:
        if column not in profile:
            profile[column] = np.nan
    profile = profile[["eval"] + PROFILE_COLUMNS].copy()
    for i, column in enumerate(["experiment", "dataset", "method", "K", "delta", "seed",
                                "setting", "status", "true_rho", "run_dir"]):
        profile.insert(i, column, meta.get(column))
    return profile


# ----------------------------------------------------------------------------- provenance
def _unique(metas: list[dict], key: str) -> list:
    return sorted({m[key] for m in metas if m.get(key) is not None}, key=str)


def provenance(metas: list[dict], runs: pd.DataFrame, notes: list[str]) -> dict:
    """Code, hardware, budgets and compute spent by one experiment's runs."""
    final_time = runs.groupby("run_dir")["train_time"].max().fillna(0.0)
    threads = {m["run_dir"]: (m.get("threads") or 1) for m in metas}
    core_seconds = sum(t * threads[d] for d, t in final_time.items())
    status = pd.Series([m["status"] for m in metas]).value_counts()
    return {
        "n_runs": len(metas),
        "runs_per_status": {s: int(n) for s, n in status.items()},
        "git_commits": _unique(metas, "git_commit"),
        "devices": _unique(metas, "device"),
        "device_names": _unique(metas, "device_name"),
        "cpus": _unique(metas, "cpu"),
        "hostnames": _unique(metas, "hostname"),
        "torch_versions": _unique(metas, "torch_version"),
        "threads": _unique(metas, "threads"),
        "epochs_budget": _unique(metas, "epochs_budget"),
        "max_time": _unique(metas, "max_time"),
        "scale": _unique(metas, "scale"),
        "datasets": _unique(metas, "dataset"),
        "inits": _unique(metas, "init"),
        "grad_norm_bounds": _unique(metas, "grad_norm_bound"),
        "ppl_floor": next((m["ppl_floor"] for m in metas if m.get("ppl_floor")), None),
        "train_time_hours": round(float(final_time.sum()) / 3600, 4),
        "train_core_hours": round(core_seconds / 3600, 4),
        "first_start": min((m["start_time"] for m in metas if m.get("start_time")), default=None),
        "last_end": max((m["end_time"] for m in metas if m.get("end_time")), default=None),
        "duplicates_dropped": notes,
    }


# ----------------------------------------------------------------------------- writing
def write_experiment(name: str, metas: list[dict], runs: pd.DataFrame, notes: list[str],
                     out: Path, add: bool = False) -> pd.DataFrame:
    """Writes runs.csv, summary.csv, profiles.csv, standins.csv (audited runs) and
    provenance.json; returns the summary. ``add``: merged with the tables already in
    ``<out>/<name>/`` (committed_tables.py; a run in both is taken from ``runs``)."""
    folder = out / name
    committed = read_committed(folder, runs) if add else None
    profiles = [p for p in (profile_rows(m) for m in metas) if p is not None]
    profile_frame = (pd.concat(profiles, ignore_index=True) if profiles else
                     pd.DataFrame(columns=["experiment", "setting", "seed", "eval"]
                                  + PROFILE_COLUMNS))
    record = provenance(metas, runs, notes)
    if committed is not None:
        runs = merge_frames(committed.runs, runs)
        profile_frame = merge_frames(committed.profiles, profile_frame)
        record = merge_provenance(committed.provenance, record, runs, committed.runs,
                                  committed.replaced)
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    order = {setting: i for i, setting in enumerate(summary["setting"])}
    runs = runs.assign(_order=runs["setting"].map(order)).sort_values(
        ["_order", "seed", "eval"], kind="stable").drop(columns="_order")
    integer_columns(runs).to_csv(folder / "runs.csv", index=False)
    summary.to_csv(folder / "summary.csv", index=False)
    profile_frame.to_csv(folder / "profiles.csv", index=False)
    standins = standin_rows(runs)
    if len(standins):
        standins.to_csv(folder / "standins.csv", index=False)
    with open(folder / "provenance.json", "w") as f:
        json.dump(record, f, indent=2, default=str)
    return summary
