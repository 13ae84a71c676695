"""Best attainable perplexity of every copy data set, per split (``python -m atbptt.floor``).

For the generated copy tasks (``copy``, ``copy_variable``, at their default seed and sizes)
and the paper's own data (``copy_paper``, ``copy_variable_paper``), counts the targets that
the input history does not determine under the copy rule (``atbptt.data.copy_rule_predictions``)
and the perplexity floor that implies (``atbptt.data.copy_floor``). Writes a CSV and a
Markdown table::

    python -m atbptt.floor --out results/copy_floor
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Dict, List

from .config import DatasetConfig, DatasetName
from .data import load_task
from .metrics import git_commit, now_iso

# dataset -> (m_min, m_max) of its preset (conf/dataset/*.yaml)
COPY_DATASETS = {DatasetName.copy: (10, 10), DatasetName.copy_variable: (5, 10),
                 DatasetName.copy_paper: (10, 10), DatasetName.copy_variable_paper: (5, 10)}
FIELDS = ["dataset", "split", "targets", "undetermined_share", "undetermined_entropy", "ppl_floor"]


def floor_table() -> List[Dict[str, object]]:
    """One row per copy dataset and split (the presets' sizes and data seed)."""
    rows = []
    for name, (m_min, m_max) in COPY_DATASETS.items():
        data = load_task(DatasetConfig(name=name, m_min=m_min, m_max=m_max))
        for split, floor in data.info["ppl_floor"].items():
            rows.append({"dataset": name.value, "split": split,
                         "targets": data.tokens[split], **floor})
    return rows


def markdown(rows: List[Dict[str, object]]) -> str:
    commit = git_commit(Path(__file__).resolve().parent)
    lines = ["Best attainable perplexity per copy data set and split: share of targets the input",
             "history does not determine under the copy rule, and the floor exp(share · H) it",
             f"implies (atbptt.data.copy_floor). Written by `python -m atbptt.floor` at commit "
             f"{commit[:10]} on {now_iso()[:10]}.", "",
             "| dataset | split | targets | undetermined | floor PPL |", "|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['split']} | {r['targets']} | "
              f"{100 * float(r['undetermined_share']):.2f} % | {float(r['ppl_floor']):.4f} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/copy_floor"),
                        help="writes OUT.csv and OUT.md")
    args = parser.parse_args(argv)
    rows = floor_table()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(rows)
    args.out.with_suffix(".md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
