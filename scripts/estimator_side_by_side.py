"""The adaptive estimator's procedures side by side on fixed weights (NOTES §3 steps 2 and 6).

For each set of weights (the untrained model of a preset, and ``snapshots/epoch_<e>.pt`` of
runs that kept them: ``snapshot_epochs``), draw ``--repeats`` times 5 independent estimates
(each its own profile of S windows, dropout active as the authors profile) and report the
distribution (median, 10th and 90th percentile over the repeats) of β̂, δ̂(10), δ̂(100),
K̂(0.5) and K̂(0.1) for:

- ``single, after``: one estimate, lag 0 = the state after the last step (the project's
  earlier LM default);
- ``single, entering``: one estimate, the authors' lag 0 (the state entering the last step);
- ``mean of 5, entering``: the authors' procedure (the LM presets' default): K̂ = clamp(int(mean
  of the 5 unclamped K̂)), δ̂ and β̂ the means of the 5.

Both conventions see the same windows and dropout masks (the same generator seed per repeat).
Writes ``<out>/side_by_side.csv`` (one row per weights, procedure and repeat) and
``<out>/side_by_side.md``. Needs the corpus (``$ATBPTT_DATA``); one thread.

    python scripts/estimator_side_by_side.py --experiment ptb_cpu_long \\
        --snapshots results/ptb_cpu_long/runs/seed0/*/snapshots/epoch_*.pt \\
        --out results/side_by_side
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from atbptt import adaptive
from atbptt.config import register_configs
from atbptt.controller import run_estimate
from atbptt.data import load_task
from atbptt.metrics import git_commit, hardware, now_iso
from atbptt.tbptt import last_step_loss
from atbptt.train import build_model
from atbptt.validate import to_config

QUANTITIES = ("beta_hat", "delta_hat_10", "delta_hat_100", "K_hat_0.5", "K_hat_0.1")
PROCEDURES = ("single, after", "single, entering", "mean of 5, entering")


def compose(experiment: str):
    from hydra import compose as hydra_compose, initialize_config_module

    register_configs()
    with initialize_config_module(config_module="atbptt.conf", version_base="1.3"):
        return to_config(hydra_compose(config_name="config",
                                       overrides=[f"experiment={experiment}", "device=cpu"]))


def weights_list(cfg, data, snapshots: list[Path]):
    """(label, model) for the untrained model and every snapshot (label: run dir and epoch)."""
    model = build_model(cfg, data, torch.device("cpu"))
    yield "untrained (seed 0)", model
    for path in snapshots:
        shot = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(cfg, data, torch.device("cpu"))
        model.load_state_dict(shot["model"])
        yield f"{path.parent.parent.name} @ epoch {shot['epoch']:g}", model


def one_repeat(cfg, data, model, seed: int) -> list[dict]:
    """The three procedures on the windows of ``seed``: one row each."""
    m = cfg.method
    kw = dict(window=m.window, burn_in=m.burn_in, num_windows=m.num_windows, num_estimates=5,
              beta_method=m.beta_method, tau=m.tau, grad_norm_bound=m.grad_norm_bound,
              k_min=m.k_min, k_max=m.k_max, deltas=(0.5, 0.1), device=torch.device("cpu"))
    loss = last_step_loss(data.classification)
    rows = []
    for lag0 in ("state_after_step", "state_entering_step"):
        est = run_estimate(model, data.train.inputs, data.train.targets, loss,
                           generator=torch.Generator().manual_seed(seed), lag0=lag0, **kw)
        short = "after" if lag0 == "state_after_step" else "entering"
        single = {"beta_hat": est.betas[0], "delta_hat_10": est.rel_biases[0][9],
                  "delta_hat_100": est.rel_biases[0][99],
                  **{f"K_hat_{d}": adaptive.clamp_K(est.k_hats[d][0], m.k_min, m.k_max)
                     for d in (0.5, 0.1)}}
        rows.append({"procedure": f"single, {short}", **single})
        if short == "entering":
            rows.append({"procedure": "mean of 5, entering", "beta_hat": est.beta_hat,
                         "delta_hat_10": est.delta_hat(10), "delta_hat_100": est.delta_hat(100),
                         **{f"K_hat_{d}": est.K_hat[d] for d in (0.5, 0.1)}})
    return [{**r, "repeat": seed} for r in rows]


def table(frame: pd.DataFrame) -> str:
    def cell(values: pd.Series, q: str) -> str:
        lo, mid, hi = np.nanpercentile(values.astype(float), [10, 50, 90])
        fmt = "{:.4f}" if q == "beta_hat" else "{:.3g}" if q.startswith("delta") else "{:.0f}"
        return f"{fmt.format(mid)} [{fmt.format(lo)}, {fmt.format(hi)}]"

    lines = ["| weights | procedure | " + " | ".join(QUANTITIES) + " |",
             "|---|---|" + "---|" * len(QUANTITIES)]
    for weights, by_w in frame.groupby("weights", sort=False):
        for proc in PROCEDURES:
            sub = by_w[by_w.procedure == proc]
            lines.append(f"| {weights} | {proc} | "
                         + " | ".join(cell(sub[q], q) for q in QUANTITIES) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="ptb_cpu_long")
    parser.add_argument("--snapshots", nargs="*", type=Path, default=[])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("results/side_by_side"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = compose(args.experiment)
    data = load_task(cfg.dataset, Path("data"), progress=False)
    rows = []
    for label, model in weights_list(cfg, data, sorted(args.snapshots)):
        for seed in range(args.repeats):
            rows += [{"weights": label, **r} for r in one_repeat(cfg, data, model, seed)]
        print(f"{label}: {args.repeats} repeats", flush=True)
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "side_by_side.csv", index=False)
    provenance = {"experiment": args.experiment, "repeats": args.repeats, "date": now_iso(),
                  "git_commit": git_commit(Path(__file__).resolve().parent), **hardware(),
                  "snapshots": [str(p) for p in sorted(args.snapshots)]}
    header = (f"# The estimator's procedures on fixed weights ({args.experiment})\n\n"
              "Median [10th, 90th percentile] over repeats; each repeat draws its own windows "
              "(the same for both lag conventions). Stand-in: "
              f"{cfg.method.grad_norm_bound.value}; W = {cfg.method.window}, burn-in "
              f"{cfg.method.burn_in}, S = {cfg.method.num_windows}, K in [{cfg.method.k_min}, "
              f"{cfg.method.k_max}].\n\nProvenance: `{json.dumps(provenance)}`\n\n")
    (args.out / "side_by_side.md").write_text(header + table(frame) + "\n")
    print(table(frame))


if __name__ == "__main__":
    main()
