"""The drawing blocks of figures.py: line styles per setting, seed means with bands, one panel,
axis ranges, the best attainable line, and the title, legend and saving of a figure.

CSV-derived frames in, matplotlib out: never imports the training package or torch.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis_common import scale_label  # noqa: E402

DPI = 110
FIXED_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:cyan",
                 "tab:olive", "tab:pink"]
ADAPTIVE_COLOURS = ["black", "#5a5a5a", "#8b4513", "#2f2f6f", "#1f4f2f", "#9a9a9a"]
ARTBP_COLOURS = ["tab:brown", "tab:pink", "darkgoldenrod", "teal", "tab:gray", "indigo"]


# ----------------------------------------------------------------------------- styles
FAMILY_STYLES = {  # method -> (colours, line style, width): the three families of truncation
    "fixed": (FIXED_COLOURS, "--", 1.4), "adaptive": (ADAPTIVE_COLOURS, "-", 1.8),
    "artbp": (ARTBP_COLOURS, ":", 2.2)}


def setting_styles(summary: pd.DataFrame) -> dict:
    """setting -> line style: fixed K dashed in colours, adaptive solid in dark shades, ARTBP
    dotted in its own colours."""
    styles, counts = {}, {}
    for _, row in summary.iterrows():
        family = row["method"] if row["method"] in FAMILY_STYLES else "adaptive"
        colours, linestyle, width = FAMILY_STYLES[family]
        n = counts.get(family, 0)
        styles[row["setting"]] = {"color": colours[n % len(colours)], "linestyle": linestyle,
                                  "linewidth": width}
        counts[family] = n + 1
    return styles


def artbp_settings(summary: pd.DataFrame) -> set:
    return set(summary.loc[summary["method"] == "artbp", "setting"])



# ----------------------------------------------------------------------------- derived curves
def add_running_best(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per run: test metric at the best valid so far, and the running minimum of valid."""
    runs = runs.sort_values(["run_dir", "eval"]).copy()
    valid = runs[f"valid_{metric}"].where(np.isfinite(runs[f"valid_{metric}"]))
    runs["valid_clean"] = valid
    runs["valid_runmin"] = valid.groupby(runs["run_dir"]).cummin()
    best_test = []
    for _, run in runs.groupby("run_dir", sort=False):
        best, test_at_best = np.inf, np.nan
        for v, t in zip(run["valid_clean"], run[f"test_{metric}"]):
            if np.isfinite(v) and v < best:
                best, test_at_best = v, t
            best_test.append(test_at_best)
    runs["test_at_best"] = best_test
    runs["valid_runmin"] = runs.groupby("run_dir")["valid_runmin"].ffill()
    return runs


def seed_band(frame: pd.DataFrame, x: str, y: str, log: bool) -> pd.DataFrame:
    """Mean over seeds at each evaluation (x averaged too), with ±1 sd (of logs if log)."""
    values = frame[[x, y, "eval"]].replace([np.inf, -np.inf], np.nan).dropna()
    if log:
        values = values[values[y] > 0].assign(**{y: lambda d: np.log10(d[y])})
    grouped = values.groupby("eval")
    out = pd.DataFrame({"x": grouped[x].mean(), "y": grouped[y].mean(),
                        "sd": grouped[y].std(ddof=1).fillna(0.0)})
    out["lo"], out["hi"] = out["y"] - out["sd"], out["y"] + out["sd"]
    if log:
        out[["y", "lo", "hi"]] = 10 ** out[["y", "lo", "hi"]]
    return out


def diverged_ends(frame: pd.DataFrame, x: str, y: str) -> list[tuple[float, float]]:
    """(x, y) of the last finite point of every diverged run in the frame."""
    points = []
    for _, run in frame[frame["status"] == "diverged"].groupby("run_dir"):
        finite = run[np.isfinite(run[x]) & np.isfinite(run[y]) & (run[y] > 0)]
        if len(finite):
            points.append((finite[x].iloc[-1], finite[y].iloc[-1]))
    return points


def plot_panel(ax, runs: pd.DataFrame, styles: dict, x: str, y: str, log: bool = False) -> None:
    """One panel: a mean curve with a light band per setting, × at diverged ends."""
    for setting, style in styles.items():
        frame = runs[runs["setting"] == setting]
        band = seed_band(frame, x, y, log)
        if band.empty:
            continue
        ax.plot(band["x"], band["y"], label=setting, **style)
        ax.fill_between(band["x"], band["lo"], band["hi"], color=style["color"], alpha=0.15,
                        linewidth=0)
        for px, py in diverged_ends(frame, x, y):
            ax.plot(px, py, marker="x", color=style["color"], markersize=9, mew=2,
                    linestyle="none")
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def robust_ylim(ax, runs: pd.DataFrame, y: str) -> None:
    """Ignore the untrained first evaluation when setting the y range of a metric panel."""
    values = runs.loc[runs["eval"] > 0, y].replace([np.inf, -np.inf], np.nan).dropna()
    if len(values) < 2:
        return
    lo, hi = values.min(), np.nanquantile(values, 0.98)
    if hi > lo:
        pad = 0.05 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)


def robust_log_ylim(ax, runs: pd.DataFrame, y: str) -> None:
    """Log-scale twin of robust_ylim: the first evaluations' δ̂ (1e-20 on an untrained LM)
    would squeeze every trained value into the top of the panel: the range is that of the
    evaluations from the first epoch on (or a tenth of the budget, if shorter)."""
    trained = runs["epoch"] >= min(1.0, 0.1 * runs["epoch"].max())
    values = runs.loc[trained, y].replace([np.inf, -np.inf], np.nan).dropna()
    values = values[values > 0]
    if len(values) >= 2 and values.max() > values.min():  # earlier evaluations may fall below
        ax.set_ylim(values.min() / 2, values.max() * 2)



# ----------------------------------------------------------------------------- figure parts
def metric_label(exp: dict, template: str) -> str:
    """template with {} for the metric: 'test {} at best valid' -> 'test PPL at best valid'."""
    return template.format("PPL" if exp["metric"] == "ppl" else "loss (MSE)")


def delta_targets(ax, summary: pd.DataFrame, styles: dict) -> None:
    """Thin dotted lines at the δ each adaptive setting aims for."""
    for _, row in summary[summary["method"] == "adaptive"].iterrows():
        ax.axhline(row["delta"], color=styles[row["setting"]]["color"], linestyle=":",
                   linewidth=0.9, alpha=0.8)


def finish(fig, axes, exp: dict, title: str, path: Path, note: bool = True) -> None:
    """Title with experiment and scale, one compact legend outside on the right, save."""
    fig.suptitle(f"{exp['name']} — {title}\n[{scale_label(exp)}]", fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize=9, frameon=False, title="setting", title_fontsize=9)
    if note:
        fig.text(1.0, 0.06, "band: ±1 sd over seeds\n×: run diverged", fontsize=8,
                 color="0.4", ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def test_floor(exp: dict) -> float:
    """Best attainable test PPL of the experiment's data (copy tasks), NaN if not recorded."""
    summary = exp["summary"]
    if "test_ppl_floor" not in summary:
        return np.nan
    values = pd.to_numeric(summary["test_ppl_floor"], errors="coerce").dropna()
    return float(values.iloc[0]) if len(values) else np.nan


def floor_line(ax, exp: dict) -> None:
    """A grey dotted line at the best attainable test PPL (atbptt.data.copy_floor)."""
    floor = test_floor(exp)
    if exp["metric"] == "ppl" and np.isfinite(floor):
        low, high = ax.get_ylim()
        if floor < low:  # keep the floor in view: the gap to it is the point
            ax.set_ylim(floor - 0.05 * (high - floor), high)
        ax.axhline(floor, color="0.5", linestyle=":", linewidth=1.2,
                   label=f"best attainable ({floor:.3f})")
