"""Collect training runs into tidy per-experiment tables (CSV/JSON/YAML in, CSV/JSON out).

Usage:
    python scripts/aggregate.py                       # every run under results/sweeps
    python scripts/aggregate.py --runs results/sweeps results/runs --out results
    python scripts/aggregate.py --experiment copy

A run directory is any directory holding ``run.json`` (found recursively, so every sweep
timestamp of an experiment is included). A malformed one (run.json or .hydra/config.yaml that
cannot be read, a metrics.csv that is not UTF-8 or has a row with extra fields) is skipped with
one line naming it and why; the others are aggregated. For each experiment this writes into
``<out>/<experiment>/``:

- ``runs.csv``       one row per run and evaluation (metrics.csv joined with run identifiers);
- ``summary.csv``    one row per method setting (fixed K, adaptive delta, or ARTBP schedule);
- ``profiles.csv``   the last gradient-norm profile of every run;
- ``standins.csv``   (audited runs) how often each stand-in's δ̂ bounds the true relative bias;
- ``provenance.json`` code versions, hardware, budgets, statuses, compute spent.

'Best' follows NOTES §4: the evaluation with the lowest validation PPL (validation loss for
regression tasks); the test metric is read at that same evaluation. Means and standard
deviations (ddof=1) are over the runs of a setting that have at least one finite validation
value, diverged runs included (their best came before they diverged). Diverged and failed
runs are never dropped: they appear in runs.csv (a failed run without metrics gets one empty
row) and are counted in summary.csv.

Never imports the training package or torch: analysis stays independent of training.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

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
# the data python -m atbptt.floor measures (results/copy_floor.csv): the presets' sizes, data seed 0
DEFAULT_COPY_DATA = {"seed": 0, "train_length": 4000, "eval_length": 1000, "batch_size": 64,
                     "eval_batch_size": 64}
PROFILE_COLUMNS = ["lag", "phi", "cum", "tail", "beta_hat", "tau"]
BEST_COLUMNS = ["has_best", "final_K", "beta_hat", "final_epoch", "final_train_time",
                "best_valid_ppl", "test_ppl_at_best", "best_valid_loss", "test_loss_at_best",
                "epoch_at_best", "train_time_at_best", "segment_length", "grad_rel_var"]
STATUSES = ["finished", "diverged", "failed", "interrupted", "running"]


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
        raise MalformedRun(f"metrics.csv cannot be read ({_one_line(error)})") from None
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


def _one_line(error: BaseException) -> str:
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


def _rho(meta: dict):
    """The data's true decay (linear/var sweeps over it), rounded so equal values match."""
    rho = meta.get("true_rho")
    return (None if rho is None or (isinstance(rho, float) and math.isnan(rho))
            else round(float(rho), 6))


def setting_key(meta: dict) -> tuple:
    """Runs of one method setting: fixed and ARTBP runs differ by K (delta is unused there),
    ARTBP runs also by schedule; runs on data of a different true decay rho are different."""
    delta = meta["delta"] if meta["method"] == "adaptive" else None
    artbp = meta.get("artbp") if meta["method"] == "artbp" else None
    variant = None if artbp is None else (artbp.get("schedule"), artbp.get("alpha"),
                                          artbp.get("stride"))
    return (meta["experiment"], meta["method"], meta["K"], delta, _rho(meta), variant)


def _preference(meta: dict) -> tuple:
    """Sort key for duplicates: finished first, then the most recent start."""
    started = meta.get("start_time") or ""
    return (meta.get("status") == "finished", str(started), meta["run_dir"])


def deduplicate(metas: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Keep one run per (experiment, method, K, delta, seed): finished, then most recent.

    Fixed-K and ARTBP runs ignore delta, so runs that differ only in delta are duplicates too.
    """
    groups: dict[tuple, list[dict]] = {}
    for meta in metas:
        key = setting_key(meta) + (meta["seed"],)
        groups.setdefault(key, []).append(meta)
    kept, notes = [], []
    for key, group in groups.items():
        group.sort(key=_preference, reverse=True)
        kept.append(group[0])
        for dropped in group[1:]:
            notes.append((key[0], f"duplicate {key}: kept {group[0]['run_dir']} "
                          f"({group[0]['status']}), dropped {dropped['run_dir']} "
                          f"({dropped['status']})"))
    return kept, notes


def label_settings(metas: list[dict]) -> None:
    """'K=10' / 'δ=0.1'; adaptive labels get the starting K only when it is ambiguous."""
    starts: dict[tuple, set] = {}
    for meta in metas:
        if meta["method"] == "adaptive":
            starts.setdefault((meta["experiment"], meta["delta"]), set()).add(meta["K"])
    rhos: dict[str, set] = {}
    for meta in metas:
        rhos.setdefault(meta["experiment"], set()).add(_rho(meta))
    for meta in metas:
        label = setting_label(meta["method"], meta["K"], meta["delta"], meta.get("artbp"))
        if meta["method"] == "adaptive" and len(starts[(meta["experiment"], meta["delta"])]) > 1:
            label += f" (K0={meta['K']})"
        if len(rhos[meta["experiment"]]) > 1:
            label += f", ρ={_rho(meta):g}"
        meta["setting"] = label


# ----------------------------------------------------------------------------- tables
def integer_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Counters stay integers in the CSV even beside the empty row of a failed run."""
    for column in ["eval", "step", "tokens", "K_in_use", "K_hat_1.0", "K_hat_0.9", "K_hat_0.5",
                   "K_hat_0.1", "trunc_max"]:
        values = frame[column].dropna()
        if np.isfinite(values).all() and (values == values.round()).all():
            frame[column] = frame[column].round().astype("Int64")
    return frame


def run_rows(meta: dict, metrics: pd.DataFrame) -> pd.DataFrame:
    """metrics rows with identifiers; one empty row for a run that logged nothing."""
    frame = metrics if len(metrics) else pd.DataFrame([{c: np.nan for c in METRIC_COLUMNS}])
    frame = frame.copy()
    for i, column in enumerate(ID_COLUMNS):
        frame.insert(i, column, meta.get(column))
    for split in ("valid", "test"):
        frame[f"{split}_ppl_floor"] = ppl_floor(meta, split)
    return frame


def ppl_floor(meta: dict, split: str) -> float:
    """Best attainable perplexity of the run's data split, as the run recorded it (copy
    tasks: ``ppl_floor`` in run.json, from atbptt.data.copy_floor); NaN elsewhere."""
    floors = meta.get("ppl_floor") or {}
    value = (floors.get(split) or {}).get("ppl_floor")
    return float(value) if value is not None else np.nan


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
    metric = "ppl" if task == "classification" else "loss"
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


def sort_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """Fixed K ascending, then adaptive delta descending (the paper's table order), then ARTBP
    by mean length."""
    rank = {"fixed": 0, "adaptive": 1, "artbp": 2}
    order = frame.assign(_method=frame["method"].map(rank).fillna(3),
                         _delta=-frame["delta"].fillna(0), _K=frame["K"],
                         _rho=frame["true_rho"].astype(float).fillna(0))
    order = order.sort_values(["experiment", "_rho", "_method", "_delta", "_K", "setting"])
    return order.drop(columns=["_method", "_delta", "_K", "_rho"]).reset_index(drop=True)


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


# ----------------------------------------------------------------------------- driver
def read_floor_table(path: Path | None) -> dict:
    """{dataset: {split: floor}} from ``python -m atbptt.floor``'s CSV; {} if absent."""
    if path is None or not path.is_file():
        return {}
    table: dict = {}
    for _, row in pd.read_csv(path).iterrows():
        table.setdefault(row["dataset"], {})[row["split"]] = {
            k: float(row[k]) for k in ("undetermined_share", "undetermined_entropy", "ppl_floor")}
    return table


def fill_floor(meta: dict, floors: dict) -> None:
    """Runs that did not record their data's best attainable perplexity (older run.json)
    take it from the floor table, when they used the data that table measured."""
    if not meta.get("ppl_floor") and meta.get("default_copy_data") and meta["dataset"] in floors:
        meta["ppl_floor"] = floors[meta["dataset"]]


def collect(roots: list[Path], experiment: str | None,
            floors: dict | None = None) -> tuple[dict, list[tuple[str, str]]]:
    """{experiment: (metas, runs frame)} for every run found, duplicates removed."""
    metas = []
    for run_dir in find_run_dirs(roots):
        try:
            meta = read_meta(run_dir)
        except (json.JSONDecodeError, OSError, TypeError, ValueError, AttributeError,
                yaml.YAMLError) as error:
            print(f"skipping {display_path(run_dir)}: unreadable run.json or .hydra/config.yaml "
                  f"({_one_line(error)})")
            continue
        if experiment is None or meta["experiment"] == experiment:
            fill_floor(meta, floors or {})
            metas.append(meta)
    readable = []
    for meta in metas:
        try:
            meta["metrics"] = read_metrics(Path(meta["run_dir"]))
        except MalformedRun as error:
            print(f"skipping {meta['run_dir']}: {error}")
            continue
        readable.append(meta)
    metas, notes = deduplicate(readable)
    label_settings(metas)
    by_experiment: dict[str, tuple[list, list]] = {}
    for meta in metas:
        metrics = meta.pop("metrics")
        meta["task"] = infer_task(meta, metrics)
        metas_of, frames = by_experiment.setdefault(meta["experiment"], ([], []))
        metas_of.append(meta)
        frames.append(run_rows(meta, metrics))
    return {name: (m, pd.concat(f, ignore_index=True)) for name, (m, f) in
            by_experiment.items()}, notes


def write_experiment(name: str, metas: list[dict], runs: pd.DataFrame, notes: list[str],
                     out: Path) -> pd.DataFrame:
    """Writes runs.csv, summary.csv, profiles.csv, provenance.json; returns the summary."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    order = {setting: i for i, setting in enumerate(summary["setting"])}
    runs = runs.assign(_order=runs["setting"].map(order)).sort_values(
        ["_order", "seed", "eval"], kind="stable").drop(columns="_order")
    integer_columns(runs).to_csv(folder / "runs.csv", index=False)
    summary.to_csv(folder / "summary.csv", index=False)
    profiles = [p for p in (profile_rows(m) for m in metas) if p is not None]
    profile_frame = (pd.concat(profiles, ignore_index=True) if profiles else
                     pd.DataFrame(columns=["experiment", "setting", "seed", "eval"]
                                  + PROFILE_COLUMNS))
    profile_frame.to_csv(folder / "profiles.csv", index=False)
    standins = standin_rows(runs)
    if len(standins):
        standins.to_csv(folder / "standins.csv", index=False)
    with open(folder / "provenance.json", "w") as f:
        json.dump(provenance(metas, runs, notes), f, indent=2, default=str)
    return summary


def print_summary(name: str, metas: list[dict], summary: pd.DataFrame) -> None:
    status = pd.Series([m["status"] for m in metas]).value_counts().to_dict()
    task = summary["task"].iloc[0]
    metric = "ppl" if task == "classification" else "loss"
    print(f"\n== {name} ({task}, {len(metas)} runs: {status})")
    for _, row in summary.iterrows():
        print(f"  {row['setting']:>14}  n={row['n_seeds']} (div {row['n_diverged']}, "
              f"fail {row['n_failed']})  best valid {metric} {row[f'best_valid_{metric}_mean']:.4g}"
              f"  test at best {row[f'test_{metric}_at_best_mean']:.4g}"
              f"  final K {row['final_K_mean']:.3g}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, default=[Path("results/sweeps")],
                        help="directories searched recursively for run directories")
    parser.add_argument("--out", type=Path, default=Path("results"),
                        help="writes <out>/<experiment>/{runs,summary,profiles}.csv")
    parser.add_argument("--experiment", default=None, help="only this experiment")
    parser.add_argument("--floors", type=Path, default=None,
                        help="best attainable perplexities (python -m atbptt.floor's CSV) for "
                             "copy runs that did not record theirs (default <out>/copy_floor.csv)")
    args = parser.parse_args(argv)
    floors = read_floor_table(args.floors or args.out / "copy_floor.csv")
    experiments, notes = collect(args.runs, args.experiment, floors)
    if not experiments:
        raise SystemExit(f"no run directories (with run.json) under {args.runs}")
    for _, note in notes:
        print(note)
    for name, (metas, runs) in sorted(experiments.items()):
        own_notes = [note for experiment, note in notes if experiment == name]
        summary = write_experiment(name, metas, runs, own_notes, args.out)
        print_summary(name, metas, summary)
    print(f"\nwrote {', '.join(str(args.out / n) for n in sorted(experiments))}")


if __name__ == "__main__":
    main()
