"""The cost of one K update of the authors' LM procedure, and its share of training time.

    python scripts/bench_estimator.py                  # LSTM 1x200, 10k vocabulary, CPU
    python scripts/bench_estimator.py --device cuda --hidden 200 900
    python scripts/bench_estimator.py --quick          # tiny sizes (smoke test)

One update averages N = 5 independent estimates, each the gradient-norm profile of S = 32
windows of W = 400 lags after a burn-in of 40, in training mode (dropout 0.2 active), every
15,000 time steps (conf/dataset/ptb.yaml). Rows, each timed against its baseline in the same
process (paired rounds, ``bench.paired``):

  (a) the update with the N estimates computed together (``method.batch_estimates=true``,
      one pass over N x S windows) vs N separate passes (the default);
  (b) the estimator's share of ``train_time`` in the ptb_cpu delta=0.1 setting: the update's
      time over that of the update plus 15,000 training steps (lean overlap TBPTT at K0 = 100,
      the K of a run's first interval), for each of the two ways.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import _sync, make_setup, paired, print_table, train_steps  # noqa: E402

from atbptt import adaptive  # noqa: E402
from atbptt.config import Style  # noqa: E402
from atbptt.tbptt import last_step_loss  # noqa: E402

INTERVAL = 15_000  # time steps between K updates (conf/dataset/ptb.yaml reestimate_steps)


def update_seconds(model, split, args, together: bool, device: str) -> float:
    """Wall clock of one K update: ``args.estimates`` estimates, the LM preset's estimator."""
    start = time.perf_counter()
    adaptive.estimate(model, split.inputs, split.targets, window=args.window, burn_in=args.burn_in,
                      num_windows=args.windows, num_estimates=args.estimates,
                      loss_fn=last_step_loss(True), generator=torch.Generator().manual_seed(0),
                      lag0="state_entering_step", grad_norm_bound="norm_sum", device=device,
                      batch_estimates=together)
    _sync(device)
    return time.perf_counter() - start


def rows_for(hidden: int, args, device: str) -> List[tuple]:
    K, chunks = args.K, args.chunks
    model, split = make_setup(hidden, args.vocab, args.batch,
                              max(K * (chunks + 2), args.burn_in + args.window + 1), device)
    model.train()  # dropout active while profiling, as the preset does (profile_dropout)
    t_together, t_separate, ratio = paired(
        lambda: update_seconds(model, split, args, True, device),
        lambda: update_seconds(model, split, args, False, device), args.rounds)
    size = f"LSTM 1x{hidden}"
    rows = [(f"K update, {args.estimates} estimates W={args.window} S={args.windows}, {size} (s): "
             "together vs separate passes", t_together, t_separate, ratio, "")]
    train_steps(model, split, K, Style.overlap, device, 1)  # warm-up
    per_step = min(train_steps(model, split, K, Style.overlap, device, chunks)
                   for _ in range(args.rounds)) / (K * chunks)
    interval = INTERVAL * per_step
    share = {name: 100 * t / (t + interval)
             for name, t in (("together", t_together), ("separate", t_separate))}
    rows.append((f"estimator share of train_time (%), 1 update per {INTERVAL} steps at K={K}, "
                 f"{size}: together vs separate", share["together"], share["separate"],
                 share["separate"] / share["together"], "<= 3 % CPU, <= 5 % GPU"))
    return rows


def table_rows(args, device: str) -> List[tuple]:
    """Rows for scripts/bench.py (label, ours, baseline, baseline/ours, target)."""
    return [row for hidden in args.sizes for row in rows_for(hidden, args, device)]


def configure(args) -> None:
    """Sizes of the LM preset, or tiny ones with ``--quick``."""
    if args.quick:
        args.sizes, args.vocab, args.batch, args.windows = [16], 50, 4, 4
        args.window, args.burn_in, args.estimates = 12, 3, 3
        args.K, args.chunks, args.rounds = 5, 2, 1
    else:
        args.vocab, args.batch, args.windows, args.window, args.burn_in = 10_000, 32, 32, 400, 40
        args.estimates, args.K, args.chunks = 5, 100, 3
        args.rounds = args.rounds or 3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--hidden", dest="sizes", type=int, nargs="+", default=[200])
    p.add_argument("--rounds", type=int, default=0, help="paired rounds (default 3)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    configure(args)
    print_table(table_rows(args, args.device), args.device)


if __name__ == "__main__":
    main()
