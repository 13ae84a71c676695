"""Collect training runs into tidy per-experiment tables (CSV/JSON/YAML in, CSV/JSON out).

Usage:
    python scripts/aggregate.py                       # every run under results/sweeps
    python scripts/aggregate.py --runs results/sweeps results/runs --out results
    python scripts/aggregate.py --experiment copy
    python scripts/aggregate.py --runs results/copy_fixed_paper/runs --add  # a later seed

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

``--add`` merges the runs found into the tables already in ``<out>/<experiment>/`` (run
directories are not committed, so a later seed is added this way): a (setting, seed) in both
is taken from the run directories, every other committed run is kept as it is
(committed_tables.py).

'Best' follows NOTES §4: the evaluation with the lowest validation PPL (validation loss for
regression tasks); the test metric is read at that same evaluation. Means and standard
deviations (ddof=1) are over the runs of a setting that have at least one finite validation
value, diverged runs included (their best came before they diverged). Diverged and failed
runs are never dropped: they appear in runs.csv (a failed run without metrics gets one empty
row) and are counted in summary.csv.

The reading of one run directory is in run_dirs.py, the tables written in experiment_csv.py, and
what the analysis scripts share (columns, setting labels and order) in analysis_common.py.

Never imports the training package or torch: analysis stays independent of training.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # the sibling modules, also when this file is loaded by its path
    sys.path.insert(0, HERE)
from analysis_common import ID_COLUMNS, METRIC_COLUMNS, setting_label, task_metric  # noqa: E402
from experiment_csv import write_experiment  # noqa: E402
from run_dirs import (MalformedRun, display_path, find_run_dirs, infer_task,  # noqa: E402
                      one_line, read_meta, read_metrics)


# ----------------------------------------------------------------------------- run identity
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


# ----------------------------------------------------------------------------- runs.csv rows
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
                  f"({one_line(error)})")
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


def print_summary(name: str, metas: list[dict], summary: pd.DataFrame) -> None:
    status = pd.Series([m["status"] for m in metas]).value_counts().to_dict()
    task = summary["task"].iloc[0]
    metric = task_metric(task)
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
    parser.add_argument("--add", action="store_true",
                        help="merge into the tables already in <out>/<experiment>/ (a run "
                             "with the same setting and seed is replaced, the others kept)")
    args = parser.parse_args(argv)
    floors = read_floor_table(args.floors or args.out / "copy_floor.csv")
    experiments, notes = collect(args.runs, args.experiment, floors)
    if not experiments:
        raise SystemExit(f"no run directories (with run.json) under {args.runs}")
    for _, note in notes:
        print(note)
    for name, (metas, runs) in sorted(experiments.items()):
        own_notes = [note for experiment, note in notes if experiment == name]
        summary = write_experiment(name, metas, runs, own_notes, args.out, add=args.add)
        print_summary(name, metas, summary)
    print(f"\nwrote {', '.join(str(args.out / n) for n in sorted(experiments))}")


if __name__ == "__main__":
    main()
