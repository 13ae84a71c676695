"""The paper's headline on one experiment: does an adaptive δ match or beat the best fixed K?

Reads ``<results>/<experiment>/runs.csv`` (written by ``scripts/aggregate.py``) and writes
``<results>/<experiment>/headline.md`` and ``figures/headline.png``: for every setting the test
perplexity at the best validation perplexity reached so far (the paper's metric, NOTES §4) at
equal epochs and at equal training time (``train_time``: training chunks and K updates, not
evaluation), mean and spread over seeds, and a verdict per δ against the best fixed K at each
budget:

- **beats**: lower than the best fixed K by more than ``--margin`` (relative, default 1 %)
  and, with several seeds, by more than the two settings' seed standard deviations together;
- **loses**: higher by as much;
- **matches**: otherwise.

The figure draws the same metric against epochs and against ``train_time`` from a third of
the budget on, its y-range that of those evaluations: the stretch where the verdicts are made,
which the convergence figure's range (set by the first epochs) squeezes into a few pixels.

CSV in, markdown and PNG out; never imports training code.

    python scripts/headline.py --results results --experiment ptb_cpu_long
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import sys

import numpy as np
import pandas as pd

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # the sibling modules, also when this file is loaded by its path
    sys.path.insert(0, HERE)
from analysis_common import load_experiment  # noqa: E402
from figure_panels import add_running_best, finish, plot_panel, plt, setting_styles  # noqa: E402


def best_so_far(runs: pd.DataFrame, column: str, budget: float) -> pd.DataFrame:
    """Per (setting, seed): test PPL at the best valid PPL among rows with ``column`` ≤ budget;
    NaN where the run has not reached the budget (its last row is below it).

    An evaluation scheduled at a fraction of an epoch runs at the first step boundary at or
    after it (epoch 0.500207 for "0.5" on PTB at K=10), so for ``column="epoch"`` a row up to
    one training step (the run's longest, where K varies) past the budget counts as at it."""
    out = []
    for (setting, seed), run in runs.groupby(["setting", "seed"], sort=False):
        run = run.sort_values("eval")
        slack = budget * 1e-6
        steps = run.step.diff()
        if column == "epoch" and (steps > 0).any():  # the longest step (K varies) in epochs
            slack = max(slack, (run.epoch.diff() / steps)[steps > 0].max())
        reached = run[column].max() >= budget - slack
        seen = run[run[column] <= budget + slack].dropna(subset=["valid_ppl"])
        value = (seen.loc[seen.valid_ppl.idxmin(), "test_ppl"]
                 if reached and len(seen) else math.nan)
        out.append({"setting": setting, "seed": seed, "test_ppl": value})
    return pd.DataFrame(out)


def summarize(values: pd.DataFrame) -> pd.DataFrame:
    return values.groupby("setting", sort=False).test_ppl.agg(["mean", "std", "count"])


def verdict(delta_row: pd.Series, fixed_row: pd.Series, margin: float) -> str:
    gap = delta_row["mean"] - fixed_row["mean"]
    need = margin * fixed_row["mean"]
    if delta_row["count"] > 1 and fixed_row["count"] > 1:
        need = max(need, np.nan_to_num(delta_row["std"]) + np.nan_to_num(fixed_row["std"]))
    return "beats" if gap < -need else "loses" if gap > need else "matches"


def budget_table(runs: pd.DataFrame, column: str, budgets: list[float], unit: str,
                 margin: float) -> list[str]:
    settings = list(dict.fromkeys(runs.setting))
    fixed = [s for s in settings if s.startswith("K=")]
    deltas = [s for s in settings if s.startswith("δ=")]
    lines = [f"| {unit} | " + " | ".join(settings) + " | best fixed K | " +
             " | ".join(f"{d} vs best K" for d in deltas) + " |",
             "|---|" + "---|" * (len(settings) + 1 + len(deltas))]
    for budget in budgets:
        stats = summarize(best_so_far(runs, column, budget))
        cells = []
        for s in settings:
            row = stats.loc[s] if s in stats.index else None
            if row is None or not row["count"] or math.isnan(row["mean"]):
                cells.append("–")
            elif row["count"] > 1:
                cells.append(f"{row['mean']:.1f} ({row['std']:.1f}, n={int(row['count'])})")
            else:
                cells.append(f"{row['mean']:.1f}")
        done = stats.dropna(subset=["mean"])
        best = done.loc[[f for f in fixed if f in done.index]]
        if best.empty:
            continue
        best_name = best["mean"].idxmin()
        verdicts = [verdict(done.loc[d], best.loc[best_name], margin) if d in done.index else "–"
                    for d in deltas]
        label = f"{budget:g}" if unit == "epoch" else f"{budget / 60:g} min"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {best_name} | " +
                     " | ".join(verdicts) + " |")
    return lines


def headline_figure(folder: Path, start_fraction: float = 1 / 3) -> Path:
    """figures/headline.png: test PPL at the best valid PPL so far against epochs and against
    ``train_time`` (minutes), mean and ±1 sd over seeds, from ``start_fraction`` of each axis's
    largest value on."""
    exp = load_experiment(folder)
    runs = add_running_best(exp["runs"], exp["metric"])
    runs["train_minutes"] = runs["train_time"] / 60
    styles = setting_styles(exp["summary"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, x, label in zip(axes, ["epoch", "train_minutes"], ["epoch", "train_time (min)"]):
        plot_panel(ax, runs, styles, x, "test_at_best")
        start = start_fraction * runs[x].max()
        shown = runs.loc[runs[x] >= start, "test_at_best"].replace([np.inf, -np.inf], np.nan)
        shown = shown.dropna()
        if len(shown) >= 2 and shown.max() > shown.min():
            pad = 0.05 * (shown.max() - shown.min())
            ax.set_ylim(shown.min() - pad, shown.max() + pad)
        ax.set_xlim(start, runs[x].max())
        ax.set_xlabel(label)
        ax.set_ylabel("test PPL at best valid")
    path = folder / "figures" / "headline.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    finish(fig, axes, exp, f"the verdict stretch (from {start_fraction:.0%} of the budget on)",
           path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--experiment", default="ptb_cpu_long")
    parser.add_argument("--margin", type=float, default=0.01)
    parser.add_argument("--epochs", type=float, nargs="*", default=[0.5, 1, 2, 3, 5, 10, 15])
    parser.add_argument("--minutes", type=float, nargs="*", default=[10, 20, 40, 60, 90, 120, 180])
    args = parser.parse_args(argv)
    folder = args.results / args.experiment
    runs = pd.read_csv(folder / "runs.csv")
    seeds = [int(s) for s in sorted(runs.seed.unique())]
    text = [f"# {args.experiment}: adaptive δ against the best fixed K",
            "",
            f"Test perplexity at the best validation perplexity so far, seeds {seeds} "
            "(mean (sd, n) where several); '–' where a run has not reached the budget. "
            f"Verdict margin: {args.margin:.0%} of the best fixed K's perplexity (and the seeds' "
            "sd together where several seeds).",
            "", "## At equal epochs", "",
            *budget_table(runs, "epoch", args.epochs, "epoch", args.margin),
            "", "## At equal training time (train_time: chunks and K updates)", "",
            *budget_table(runs, "train_time", [m * 60 for m in args.minutes], "time", args.margin),
            ""]
    (folder / "headline.md").write_text("\n".join(text))
    print("\n".join(text))
    print(f"wrote {headline_figure(folder)}")


if __name__ == "__main__":
    main()
