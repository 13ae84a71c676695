"""Figures and a comparison table from the aggregated results (CSV/JSON in, PNG/markdown out).

Usage:
    python scripts/figures.py                       # every results/<experiment>/ with runs.csv
    python scripts/figures.py --results results --experiment copy

Reads only ``results/<experiment>/{runs,summary,profiles}.csv`` and ``provenance.json``
(written by scripts/aggregate.py) and writes into ``results/<experiment>/figures/``:

- ``convergence.png``  NOTES §7 Fig. 1/2: test PPL at best valid so far, K in use, δ̂(K) (log)
                       against epoch; fixed K dashed in colours, adaptive solid in dark shades,
                       ARTBP dotted (K: its mean truncation length; a fourth panel shows its
                       gradient relative variance, its δ̂ being that of a fixed K);
- ``validation.png``   Fig. C.1/C.2: valid PPL and its running minimum against epoch;
- ``runtime.png``      the three convergence panels against training seconds;
- ``decay.png``        φ̂_k against lag (log) with the fitted geometric tail, one run per setting;
- ``beta_vs_rho.png``  (tasks with a known ρ) β̂ against the true ρ, with the identity line;

and ``results/<experiment>/table.md``: our numbers beside the paper's (scripts/paper_results.csv).
Regression tasks use losses where classification tasks use perplexities. Curves are means over
seeds (band: ±1 sd; geometric mean and sd of logs on log axes); a diverged run's last point
is marked with ×.

Never imports the training package or torch: analysis stays independent of training.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 110
FIXED_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:cyan",
                 "tab:olive", "tab:pink"]
ADAPTIVE_COLOURS = ["black", "#5a5a5a", "#8b4513", "#2f2f6f", "#1f4f2f", "#9a9a9a"]
ARTBP_COLOURS = ["tab:brown", "tab:pink", "darkgoldenrod", "teal", "tab:gray", "indigo"]
UNITS = {"ppl": "PPL", "loss": "loss"}
PAPER_CSV = Path(__file__).resolve().parent / "paper_results.csv"
# experiment name prefix (or dataset name) -> the paper's dataset column (NOTES §6)
PAPER_DATASETS = [("copy_variable", "copy_variable"), ("copy", "copy"), ("ptb", "ptb"),
                  ("wikitext2", "wikitext2"), ("wiki2", "wikitext2")]


# ----------------------------------------------------------------------------- loading
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
            "metric": "ppl" if task == "classification" else "loss"}


def scale_label(exp: dict) -> str:
    scales = exp["provenance"].get("scale") or sorted(exp["runs"]["scale"].dropna().unique())
    return "; ".join(map(str, scales)) or "scale unknown"


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


# ----------------------------------------------------------------------------- figures
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


def standin_figure(exp: dict, path: Path) -> bool:
    """δ̂(K) of the K in use under each stand-in against the audited true relative bias
    (one point per evaluation); points above the diagonal bound the truth. False if no
    run was audited."""
    runs = exp["runs"]
    if "true_rel_bias" not in runs or "delta_hat_grad" not in runs:
        return False
    audited = runs[np.isfinite(pd.to_numeric(runs["true_rel_bias"], errors="coerce"))]
    audited = audited[audited["true_rel_bias"] > 0]
    if audited.empty:
        return False
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    for column, marker, label in (("delta_hat_grad", "o", "grad: ‖averaged Σ∂L/∂h‖"),
                                  ("delta_hat_norm_sum", "^", "norm_sum: Σ mean ‖∂L/∂h‖")):
        ok = audited[np.isfinite(audited[column]) & (audited[column] > 0)]
        ax.scatter(ok["true_rel_bias"], ok[column], marker=marker, s=16, alpha=0.7, label=label)
    lo = max(min(audited["true_rel_bias"].min(), 1e-6), 1e-12)
    hi = max(audited["true_rel_bias"].max(), 1.0)
    ax.plot([lo, hi], [lo, hi], color="0.4", linewidth=1, linestyle="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("audited true relative bias of TBPTT(K)")
    ax.set_ylabel("estimated δ̂(K)")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"{exp['name']}: the two stand-ins for ‖E ĝ_K‖\n[{scale_label(exp)}]", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return True


def three_panels(exp: dict, runs: pd.DataFrame, styles: dict, x: str, xlabel: str,
                 title: str, path: Path) -> None:
    """NOTES §7: test metric at best valid so far, K in use, δ̂(K) of that K (log); with ARTBP
    runs, their gradient relative variance (log) in a fourth panel instead of δ̂ (unbiased)."""
    artbp = artbp_settings(exp["summary"])
    biased = {s: style for s, style in styles.items() if s not in artbp}
    has_var = bool(artbp) and runs.loc[runs["setting"].isin(artbp), "grad_rel_var"].notna().any()
    fig, axes = plt.subplots(1, 4 if has_var else 3, figsize=(18 if has_var else 13.5, 3.8))
    plot_panel(axes[0], runs, styles, x, "test_at_best")
    robust_ylim(axes[0], runs, "test_at_best")
    floor_line(axes[0], exp)
    axes[0].set_ylabel(metric_label(exp, "test {} at best valid"))
    plot_panel(axes[1], runs, styles, x, "K_in_use")
    axes[1].set_ylabel("truncation K in use (ARTBP: mean)")
    plot_panel(axes[2], runs, biased, x, "delta_hat", log=True)
    robust_log_ylim(axes[2], runs[runs["setting"].isin(biased)], "delta_hat")
    delta_targets(axes[2], exp["summary"], styles)
    axes[2].set_ylabel("estimated relative bias δ̂(K)")
    if has_var:
        plot_panel(axes[3], runs, {s: styles[s] for s in artbp}, x, "grad_rel_var", log=True)
        axes[3].set_ylabel("ARTBP gradient relative variance")
    for ax in axes:
        ax.set_xlabel(xlabel)
    finish(fig, axes, exp, title, path)


def validation_figure(exp: dict, runs: pd.DataFrame, styles: dict, path: Path) -> None:
    """NOTES §7 Fig. C.1/C.2: validation metric and its cumulative minimum against epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, column, what in [(axes[0], "valid_clean", "valid {}"),
                             (axes[1], "valid_runmin", "best valid {} so far")]:
        plot_panel(ax, runs, styles, "epoch", column)
        robust_ylim(ax, runs, column)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric_label(exp, what))
    finish(fig, axes, exp, "validation", path)


def decay_figure(exp: dict, styles: dict, path: Path, per_setting: int = 1) -> bool:
    """φ̂_k against lag (log) with the fitted tail, the lowest seed of each setting."""
    profiles = exp["profiles"]
    if profiles.empty or "phi" not in profiles:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for setting, style in styles.items():
        frame = profiles[profiles["setting"] == setting]
        for seed in sorted(frame["seed"].unique())[:per_setting]:
            run = frame[frame["seed"] == seed].sort_values("lag")
            phi = run["phi"].where(run["phi"] > 0)
            beta = run["beta_hat"].dropna()
            label = f"{setting} (seed {seed}, β̂={beta.iloc[0]:.3f})" if len(beta) else setting
            ax.plot(run["lag"], phi, color=style["color"], linestyle="-", linewidth=1.3,
                    label=label)
            tail = run["tail"].where(run["tail"] > 0)
            ax.plot(run["lag"], tail, color=style["color"], linestyle=":", linewidth=2.4,
                    alpha=0.7)
            taus = run["tau"].dropna()
            if len(taus):
                ax.axvline(taus.iloc[0], color="0.7", linewidth=0.8, zorder=0)
    ax.set_yscale("log")
    ax.set_xlabel("lag k")
    ax.set_ylabel("mean gradient norm φ̂_k")
    ax.grid(alpha=0.3)
    ax.plot([], [], color="0.3", linestyle=":", label="fitted tail φ̂_τ β̂^(k−τ)")
    ax.plot([], [], color="0.7", linewidth=0.8, label="τ")
    finish(fig, [ax], exp, "gradient-norm decay (last profile)", path, note=False)
    return True


def beta_figure(exp: dict, styles: dict, path: Path) -> bool:
    """β̂ against the true ρ (linear/VAR tasks): every eval faint, each run's final bold."""
    runs = exp["runs"]
    if "true_rho" not in runs or runs["true_rho"].isna().all():
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    offsets = np.linspace(-0.01, 0.01, len(styles)) if len(styles) > 1 else [0.0]
    for offset, (setting, style) in zip(offsets, styles.items()):
        frame = runs[(runs["setting"] == setting) & np.isfinite(runs["beta_hat"])]
        ax.scatter(frame["true_rho"] + offset, frame["beta_hat"], s=10, color=style["color"],
                   alpha=0.2)
        final = frame.sort_values("eval").groupby("run_dir").last()
        ax.scatter(final["true_rho"] + offset, final["beta_hat"], s=40, color=style["color"],
                   edgecolor="white", label=setting)
    values = pd.concat([runs["true_rho"], runs["beta_hat"]]).replace([np.inf, -np.inf], np.nan)
    lo, hi = min(values.min(), 0.0), max(values.max(), 1.0)
    ax.plot([lo, hi], [lo, hi], color="0.5", linewidth=1, label="β̂ = ρ")
    ax.set_xlabel("true spectral radius ρ (settings offset by ≤0.01)")
    ax.set_ylabel("estimated decay rate β̂")
    ax.grid(alpha=0.3)
    finish(fig, [ax], exp, "β̂ vs true ρ (large: final per run; faint: every eval)", path,
           note=False)
    return True


# ----------------------------------------------------------------------------- table
def paper_dataset(exp: dict) -> str | None:
    """The paper's column for this experiment: by experiment name, else by dataset."""
    names = [exp["name"]] + [str(d) for d in exp["summary"].get("dataset", pd.Series()).unique()]
    for name in names:
        for prefix, dataset in PAPER_DATASETS:
            if name.startswith(prefix):
                return dataset
    return None


def setting_order(label: str) -> tuple:
    """Fixed K ascending, then adaptive δ descending, then ARTBP by mean length:
    'K=5' < 'K=10' < 'δ=0.9' < 'δ=0.1' < 'ARTBP c=1/10' < 'ARTBP c=1/20'."""
    artbp = re.match(r"ARTBP (?:c=1/|α=[0-9.]+, mean )([0-9.]+)", label)
    if artbp:
        return (2, float(artbp.group(1)), label)
    match = re.match(r"(K|δ)=([0-9.eE+-]+)", label)
    if not match:
        return (3, 0.0, label)
    value = float(match.group(2))
    return (0, value, label) if match.group(1) == "K" else (1, -value, label)


def mean_sd(mean: float, sd: float, digits: int = 4, keep_zeros: bool = True) -> str:
    """'1.350 (0.21)': mean to `digits` significant digits, sd to two; '–' when missing."""
    if pd.isna(mean):
        return "–"
    text = f"{mean:#.{digits}g}".rstrip(".") if keep_zeros else f"{mean:.{digits}g}"
    return text + (f" ({sd:.2g})" if pd.notna(sd) else "")


def our_columns(row: pd.Series, metric: str) -> dict:
    """Our cells of one setting: n (with failures), best valid, test at best, final K."""
    notes = [f"{row[f'n_{s}']} {s}" for s in ("diverged", "failed", "running")
             if row.get(f"n_{s}", 0)]
    return {"n": f"{row['n_seeds']}" + (f" ({', '.join(notes)})" if notes else ""),
            f"ours: best valid {UNITS[metric]}": mean_sd(row[f"best_valid_{metric}_mean"],
                                                       row[f"best_valid_{metric}_sd"]),
            f"ours: test {UNITS[metric]} at best": mean_sd(row[f"test_{metric}_at_best_mean"],
                                                         row[f"test_{metric}_at_best_sd"]),
            "ours: final K": mean_sd(row["final_K_mean"], np.nan, 3, keep_zeros=False)}


def table_markdown(exp: dict, paper: pd.DataFrame) -> str:
    """Our numbers (mean (sd), n seeds) beside the paper's where the experiment maps."""
    metric, dataset = exp["metric"], paper_dataset(exp)
    ours = {row["setting"]: our_columns(row, metric) for _, row in exp["summary"].iterrows()}
    published = paper[paper["dataset"] == dataset] if dataset else paper.iloc[:0]
    settings = sorted(set(ours) | set(published["setting"]), key=setting_order)
    paper_cols = {m: f"paper: {m.replace('_ppl', ' PPL')}" for m in published["metric"].unique()}
    header = ["setting", "n"] + [c for c in next(iter(ours.values())) if c != "n"] \
        + list(paper_cols.values())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting in settings:
        cells = {"setting": setting, **ours.get(setting, {})}
        for m, column in paper_cols.items():
            hit = published[(published["setting"] == setting) & (published["metric"] == m)]
            cells[column] = f"{hit['mean'].iloc[0]} ({hit['sd'].iloc[0]})" if len(hit) else ""
        lines.append("| " + " | ".join(cells.get(c, "") for c in header) + " |")
    lines += floor_rows(exp, header)
    source = (f"paper: Aicher, Foti & Fox (UAI 2019), NOTES §6, column '{dataset}' "
              "(GPU, full-size models and budgets)" if dataset else
              "no published counterpart for this experiment")
    return "\n".join([
        f"# {exp['name']}: our results vs the paper",
        "",
        f"Ours: {scale_label(exp)} — mean (sd over seeds), test {UNITS[metric]} at the "
        f"evaluation with the best valid {UNITS[metric]}; n = runs (a diverged run counts "
        f"with its best before divergence; failed runs have no numbers).",
        f"Reference: {source}.",
        f"Initialization: {', '.join(map(str, exp['provenance'].get('inits', []))) or '?'}; "
        f"stand-in for ‖E ĝ_K‖ that set K: "
        f"{', '.join(map(str, exp['provenance'].get('grad_norm_bounds', []))) or '?'}.",
        "",
        *lines, "", *standin_table(exp)])


def floor_rows(exp: dict, header: list[str]) -> list[str]:
    """A table row with the best attainable valid/test PPL of this data (copy tasks)."""
    floors = exp["provenance"].get("ppl_floor") or {}
    if exp["metric"] != "ppl" or not floors:
        return []
    cells = {"setting": "best attainable", "n": "",
             "ours: best valid PPL": f"{floors['valid']['ppl_floor']:.4f}",
             "ours: test PPL at best": f"{floors['test']['ppl_floor']:.4f}"}
    share = ", ".join(f"{split} {100 * floors[split]['undetermined_share']:.2f} %"
                      for split in ("train", "valid", "test") if split in floors)
    cells["ours: final K"] = f"undetermined targets: {share}"
    return ["| " + " | ".join(cells.get(c, "") for c in header) + " |"]


def standin_table(exp: dict) -> list[str]:
    """Per setting: how often each stand-in's δ̂ was at least the audited true bias, and the
    median K̂(0.5) each would pick (standins.csv, written by aggregate.py)."""
    path = exp.get("folder", Path()) / "standins.csv"
    if not path.is_file():
        return []
    frame = pd.read_csv(path)
    lines = ["Stand-ins for ‖E ĝ_K‖ against the audited true relative bias of the K in use "
             "(evaluations with method.audit):", "",
             "| setting | audited evals | median true bias | δ̂ ≥ true: grad | δ̂ ≥ true: norm_sum "
             "| median δ̂: grad | median δ̂: norm_sum | median K̂(0.5): grad "
             "| median K̂(0.5): norm_sum |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        lines.append(f"| {r['setting']} | {int(r['n_audited'])} | "
                     f"{r['true_rel_bias_median']:.3g} | "
                     f"{100 * r['share_grad_bounds_true']:.0f} % | "
                     f"{100 * r['share_norm_sum_bounds_true']:.0f} % | "
                     f"{r['delta_hat_grad_median']:.3g} | {r['delta_hat_norm_sum_median']:.3g} | "
                     f"{r['K_hat_0.5_grad_median']:g} | {r['K_hat_0.5_norm_sum_median']:g} |")
    return lines + [""]


# ----------------------------------------------------------------------------- driver
def make_figures(folder: Path, paper: pd.DataFrame) -> list[Path]:
    """Every figure and table.md of one experiment folder; returns the files written."""
    exp = load_experiment(folder)
    out = folder / "figures"
    out.mkdir(exist_ok=True)
    styles = setting_styles(exp["summary"])
    runs = add_running_best(exp["runs"], exp["metric"])
    written = [out / "convergence.png", out / "validation.png", out / "runtime.png"]
    three_panels(exp, runs, styles, "epoch", "epoch", "convergence", written[0])
    validation_figure(exp, runs, styles, written[1])
    three_panels(exp, runs, styles, "train_time", "training time (s)", "runtime", written[2])
    if decay_figure(exp, styles, out / "decay.png"):
        written.append(out / "decay.png")
    if beta_figure(exp, styles, out / "beta_vs_rho.png"):
        written.append(out / "beta_vs_rho.png")
    if standin_figure(exp, out / "standins.png"):
        written.append(out / "standins.png")
    (folder / "table.md").write_text(table_markdown(exp, paper))
    return written + [folder / "table.md"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="folder of <experiment>/runs.csv written by aggregate.py")
    parser.add_argument("--experiment", default=None, help="only this experiment")
    parser.add_argument("--paper", type=Path, default=PAPER_CSV, help="published numbers")
    args = parser.parse_args(argv)
    folders = sorted(p.parent for p in args.results.glob("*/runs.csv")
                     if args.experiment in (None, p.parent.name))
    if not folders:
        raise SystemExit(f"no <experiment>/runs.csv under {args.results}")
    paper = pd.read_csv(args.paper, dtype=str)  # keep the transcribed digits (1.030)
    for folder in folders:
        written = make_figures(folder, paper)
        print(f"{folder.name}: " + ", ".join(p.name for p in written))


if __name__ == "__main__":
    main()
