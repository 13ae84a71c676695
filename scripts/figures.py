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

The drawing blocks are in figure_panels.py, table.md in markdown_tables.py, and what the
analysis scripts share (reading results back, setting labels and order) in analysis_common.py.

Never imports the training package or torch: analysis stays independent of training.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # the sibling modules, also when this file is loaded by its path
    sys.path.insert(0, HERE)
from analysis_common import load_experiment, scale_label  # noqa: E402
from figure_panels import (DPI, add_running_best, artbp_settings, delta_targets,  # noqa: E402
                           finish, floor_line, metric_label, plot_panel, robust_log_ylim,
                           robust_ylim, setting_styles)
from markdown_tables import PAPER_CSV, read_paper, table_markdown  # noqa: E402


# ----------------------------------------------------------------------------- figures
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
        artbp_styles = {s: style for s, style in styles.items() if s in artbp}  # setting order
        plot_panel(axes[3], runs, artbp_styles, x, "grad_rel_var", log=True)
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
    paper = read_paper(args.paper)
    for folder in folders:
        written = make_figures(folder, paper)
        print(f"{folder.name}: " + ", ".join(p.name for p in written))


if __name__ == "__main__":
    main()
