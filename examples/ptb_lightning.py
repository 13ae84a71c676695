"""This project's word LM on PTB in a PyTorch Lightning 2.x ``Trainer``, truncated by fixed K,
the adaptive rule (Aicher, Foti & Fox, UAI 2019) or ARTBP (``atbptt.lightning.TBPTTMixin``).

    pip install -e '.[lightning]'
    python examples/ptb_lightning.py --method adaptive --delta 0.1   # PTB from $ATBPTT_DATA/ptb
    python examples/ptb_lightning.py --method artbp --K 35 --max-batches 20 --hidden 32 --emsize 32

Batches are consecutive segments of ``--segment`` steps of the ``--batch-size`` streams; K does
not depend on them (a chunk that reaches a batch's end goes on in the next). Lightning's CSV
logger writes ``tbptt/K``, ``train_loss``, ``val_loss`` (and ``tbptt/K_hat``, ``delta_hat``,
``beta_hat`` for the adaptive rule) to ``<--out>/version_N/metrics.csv``; the last line printed
is ``| end | valid ppl ... | test ppl ...``. Bad input: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

try:
    import lightning.pytorch as L
    from lightning.pytorch.loggers import CSVLogger

    from atbptt.lightning import ARTBP, Adaptive, Fixed, TBPTTMixin, stream_loader
except ImportError as err:  # the extra is missing: one line, no traceback
    print(f"ptb_lightning.py: error: {err}", file=sys.stderr)
    sys.exit(2)

from atbptt.config import Cell
from atbptt.data import DataError, lm_split, load_corpus, resolve_data_dir
from atbptt.models import ModelSpec, RNNModel
from atbptt.tbptt import cross_entropy


class WordLM(TBPTTMixin, L.LightningModule):
    """``atbptt.models.RNNModel`` (embedding, LSTM/GRU, decoder), plain SGD with a norm clip."""

    def __init__(self, spec: ModelSpec, truncation, lr: float, clip: float):
        super().__init__()
        self.net, self.truncation, self.lr, self.tbptt_clip = RNNModel(spec), truncation, lr, clip

    def forward(self, x, state):  # x [T, B] token ids -> logits [T, B, V], state
        return self.net(x, state)

    def init_state(self, batch_size, device):
        return self.net.init_state(batch_size, device)

    def tbptt_model(self):  # recur/decode/state_output: the fast profile
        return self.net

    def sequence_loss(self, out, y):  # mean cross-entropy over every step and stream
        return cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def window_loss(self, out, y):  # the estimator's last-step loss, one per window
        return torch.nn.functional.cross_entropy(out, y, reduction="none")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def truncation_of(args):
    if args.method == "fixed":
        return Fixed(args.K)
    if args.method == "artbp":
        return ARTBP(float(args.K), seed=args.seed)
    return Adaptive(delta=args.delta, K0=args.K, window=args.window, num_windows=args.num_windows,
                    k_min=args.k_min, k_max=args.k_max, reestimate_every=args.reestimate_every,
                    grad_norm_bound="norm_sum", seed=args.seed)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None,
                   help="folder holding ptb/ (default $ATBPTT_DATA, ./data)")
    p.add_argument("--method", choices=("fixed", "adaptive", "artbp"), default="adaptive")
    p.add_argument("--K", type=int, default=35, help="fixed K, adaptive K0, ARTBP mean length")
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--num-windows", type=int, default=16)
    p.add_argument("--k-min", type=int, default=5)
    p.add_argument("--k-max", type=int, default=100)
    p.add_argument("--reestimate-every", type=int, default=2500, help="time steps")
    p.add_argument("--model", choices=("lstm", "gru"), default="lstm")
    p.add_argument("--emsize", type=int, default=200)
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=20.0)
    p.add_argument("--clip", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--segment", type=int, default=200, help="time steps per Lightning batch")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-batches", type=int, default=None, help="training batches per epoch")
    p.add_argument("--max-eval-batches", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/lightning", help="CSV logs go here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    data_dir = Path(args.data).parent if args.data and Path(args.data).name == "ptb" else args.data
    try:
        for name, value in (("--batch-size", args.batch_size), ("--segment", args.segment),
                            ("--epochs", args.epochs)):
            if value < 1:
                raise ValueError(f"{name}={value} is not allowed; it must be >= 1")
        truncation = truncation_of(args)
        corpus = load_corpus("ptb", resolve_data_dir(data_dir, Path("data")),
                             download=os.environ.get("ATBPTT_OFFLINE") != "1", progress=False)
    except (DataError, ValueError) as err:
        print(f"ptb_lightning.py: error: {err}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    splits = {s: lm_split(ids, args.batch_size if s == "train" else 10)
              for s, ids in corpus.tokens.items()}
    spec = ModelSpec(Cell(args.model), corpus.vocab_size, corpus.vocab_size, True, args.hidden,
                     args.layers, args.emsize, args.dropout)
    module = WordLM(spec, truncation, args.lr, args.clip)
    limit = {} if args.max_eval_batches is None else {
        "limit_val_batches": args.max_eval_batches, "limit_test_batches": args.max_eval_batches}
    trainer = L.Trainer(max_epochs=args.epochs, limit_train_batches=args.max_batches or 1.0,
                        logger=CSVLogger(args.out, name="ptb"), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, log_every_n_steps=1, **limit)
    loaders = {s: stream_loader(split.inputs, split.targets, args.segment)
               for s, split in splits.items()}
    try:
        trainer.fit(module, loaders["train"], loaders["valid"])
    except ValueError as err:  # e.g. estimator windows longer than the training streams
        print(f"ptb_lightning.py: error: {err}", file=sys.stderr)
        return 2
    valid = module.tbptt_eval_loss
    trainer.test(module, loaders["test"], verbose=False)
    for step, K_hat, beta_hat in module.tbptt_estimates:
        print(f"| estimate | step {step:5d} | K_hat {K_hat:4d} | beta_hat {beta_hat:.4f}")
    Ks = [k for _, k in module.tbptt_history]
    print(f"| chunks {len(Ks)} | K first {Ks[0]} last {Ks[-1]} mean {sum(Ks) / len(Ks):.1f} | "
          f"logs {trainer.logger.log_dir}")
    print(f"| end | valid ppl {math.exp(valid):8.2f} | "
          f"test ppl {math.exp(module.tbptt_eval_loss):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
