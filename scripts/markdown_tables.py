"""table.md for figures.py: our numbers (mean (sd), n seeds) beside the paper's
(scripts/paper_results.csv, NOTES §6), the best attainable row of copy data, and how often each
stand-in's δ̂ bounded the audited true bias (standins.csv).

CSV/JSON in, markdown out: never imports the training package or torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis_common import scale_label, setting_order

UNITS = {"ppl": "PPL", "loss": "loss"}
PAPER_CSV = Path(__file__).resolve().parent / "paper_results.csv"
# experiment name prefix (or dataset name) -> the paper's dataset column (NOTES §6)
PAPER_DATASETS = [("copy_variable", "copy_variable"), ("copy", "copy"), ("ptb", "ptb"),
                  ("wikitext2", "wikitext2"), ("wiki2", "wikitext2")]


# ----------------------------------------------------------------------------- the paper's numbers
def read_paper(path: Path = PAPER_CSV) -> pd.DataFrame:
    """The published numbers, as text: keeps the transcribed digits (1.030)."""
    return pd.read_csv(path, dtype=str)


def paper_dataset(exp: dict) -> str | None:
    """The paper's column for this experiment: by experiment name, else by dataset."""
    names = [exp["name"]] + [str(d) for d in exp["summary"].get("dataset", pd.Series()).unique()]
    for name in names:
        for prefix, dataset in PAPER_DATASETS:
            if name.startswith(prefix):
                return dataset
    return None


# ----------------------------------------------------------------------------- table
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
