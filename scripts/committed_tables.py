"""Adding runs to an experiment's committed tables (``aggregate.py --add``).

Run directories are not committed, so a later seed or setting cannot be aggregated together
with the runs already in ``<out>/<experiment>/`` by reading directories alone. With ``--add``,
the tables already written there are read back and merged with the runs found:

- a run is identified by its (setting, seed); where the run directories hold one, it replaces
  the committed one (noted in provenance.json's ``duplicates_dropped``); every other committed
  run keeps its rows of runs.csv and profiles.csv unchanged;
- summary.csv and standins.csv are recomputed from the merged runs.csv;
- provenance.json: lists (commits, hardware, budgets, ...) are the union of the committed and
  the new runs'; counts, ``train_time_hours`` and ``first_start``/``last_end`` cover both;
  ``train_core_hours`` counts a committed run at its recorded thread count (one per run when the
  committed provenance records a single count, else the largest: an upper bound).

CSV/JSON only: never imports the training package or torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

RUN_KEY = ["setting", "seed"]


@dataclass
class Committed:
    """The committed tables of one experiment, less the runs the new run directories replace."""
    runs: pd.DataFrame         # runs.csv rows of the committed runs kept
    profiles: pd.DataFrame     # their profiles.csv rows
    provenance: dict           # the committed provenance.json
    replaced: list[str]        # one note per committed run replaced by a new one


def _keys(frame: pd.DataFrame) -> pd.Series:
    return frame["setting"].astype(str) + "\x00" + frame["seed"].astype(int).astype(str)


def read_committed(folder: Path, new_runs: pd.DataFrame) -> Committed | None:
    """The tables in ``folder`` minus the (setting, seed) runs that ``new_runs`` holds;
    None where the folder has no runs.csv (nothing committed: the new runs alone are written).

    Raises SystemExit (one line) where runs.csv or provenance.json cannot be read."""
    runs_csv = folder / "runs.csv"
    if not runs_csv.is_file():
        return None
    try:
        runs = pd.read_csv(runs_csv)
        provenance = json.loads((folder / "provenance.json").read_text())
        profiles_csv = folder / "profiles.csv"
        profiles = pd.read_csv(profiles_csv) if profiles_csv.is_file() else pd.DataFrame()
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise SystemExit(f"aggregate.py --add: cannot read the committed tables in {folder}: "
                         f"{str(error).splitlines()[0]}")
    missing = [c for c in RUN_KEY + ["run_dir", "status", "train_time"] if c not in runs]
    if missing:
        raise SystemExit(f"aggregate.py --add: {runs_csv} has no column {missing[0]!r}")
    new_keys = set(_keys(new_runs))
    replaced_mask = _keys(runs).isin(new_keys)
    replaced = [f"replaced committed run {setting!r} seed {int(seed)} ({run_dir})"
                for (setting, seed, run_dir), _ in
                runs[replaced_mask].groupby(RUN_KEY + ["run_dir"], sort=False)]
    kept_dirs = set(runs.loc[~replaced_mask, "run_dir"])
    if len(profiles) and "run_dir" in profiles:
        profiles = profiles[profiles["run_dir"].isin(kept_dirs)]
    return Committed(runs[~replaced_mask], profiles, provenance, replaced)


def merge_frames(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Rows of both, the new frame's columns first, then any only the committed one has."""
    if not len(old):
        return new
    if not len(new):
        return old
    columns = list(new.columns) + [c for c in old.columns if c not in new.columns]
    return pd.concat([new, old], ignore_index=True).reindex(columns=columns)


def _union(a, b) -> list:
    return sorted({*(a or []), *(b or [])}, key=str)


def merge_provenance(old: dict, new: dict, runs: pd.DataFrame, kept: pd.DataFrame,
                     replaced: list[str]) -> dict:
    """provenance.json of the merged experiment; ``runs`` is the merged runs.csv frame and
    ``kept`` the committed runs' rows in it."""
    out = dict(new)
    for key in set(old) | set(new):
        if isinstance(old.get(key), list) or isinstance(new.get(key), list):
            out[key] = _union(old.get(key), new.get(key))
    per_run = runs.groupby("run_dir", sort=False).agg(status=("status", "first"),
                                                      train_time=("train_time", "max"))
    out["n_runs"] = len(per_run)
    out["runs_per_status"] = {s: int(n) for s, n in per_run["status"].value_counts().items()}
    out["train_time_hours"] = round(float(per_run["train_time"].fillna(0.0).sum()) / 3600, 4)
    kept_seconds = float(kept.groupby("run_dir")["train_time"].max().fillna(0.0).sum())
    threads = max((t for t in old.get("threads") or [1] if isinstance(t, (int, float))),
                  default=1)
    out["train_core_hours"] = round(new.get("train_core_hours", 0.0)
                                    + kept_seconds * threads / 3600, 4)
    starts = [t for t in (old.get("first_start"), new.get("first_start")) if t]
    ends = [t for t in (old.get("last_end"), new.get("last_end")) if t]
    out["first_start"] = min(starts, default=None)
    out["last_end"] = max(ends, default=None)
    out["ppl_floor"] = new.get("ppl_floor") or old.get("ppl_floor")
    out["duplicates_dropped"] = [*(old.get("duplicates_dropped") or []),
                                 *(new.get("duplicates_dropped") or []), *replaced]
    return out
