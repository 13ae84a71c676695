"""A pytorch/examples-style LSTM language model on PTB, in plain PyTorch, with the truncation
K chosen by ``atbptt.AdaptiveTruncation`` (adaptive TBPTT, Aicher, Foti & Fox, UAI 2019).

The model, data handling and loop are those of pytorch/examples' ``word_language_model``;
the two lines that differ are marked ``# atbptt``: K comes from the controller instead of
``--bptt``, and the controller is told how many time steps each update consumed.

    python examples/ptb_plain_loop.py                                   # PTB from $ATBPTT_DATA/ptb
    python examples/ptb_plain_loop.py --max-batches 60 --hidden 32 --emsize 32   # about a minute
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from atbptt import AdaptiveTruncation


# ------------------------------------------------------------------------------------ data
class Corpus:
    """Word ids of the three splits: whitespace tokens, one ``<eos>`` per line."""

    def __init__(self, folder: Path):
        self.words: dict = {}
        self.train, self.valid, self.test = (self.tokenize(folder / f"ptb.{s}.txt")
                                             for s in ("train", "valid", "test"))

    def tokenize(self, path: Path) -> torch.Tensor:
        ids = [self.words.setdefault(w, len(self.words))
               for line in path.read_text().splitlines() for w in line.split() + ["<eos>"]]
        return torch.tensor(ids, dtype=torch.long)


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Lay the stream into ``batch_size`` columns, time-major ``[T, B]``::

        a b c d e f g h i j k l   ->   a e i
                                       b f j
                                       c g k
                                       d h l   (B = 3)
    """
    steps = data.size(0) // batch_size
    return data[:steps * batch_size].view(batch_size, -1).t().contiguous()


def get_batch(source: torch.Tensor, i: int, K: int):
    """Inputs ``[K, B]`` from position i and the next-word targets, flattened ``[K*B]``."""
    length = min(K, source.size(0) - 1 - i)
    return source[i:i + length], source[i + 1:i + 1 + length].reshape(-1)


# ------------------------------------------------------------------------------------ model
class WordLM(nn.Module):
    """Embedding, LSTM/GRU, linear decoder reading the LSTM's output sequence."""

    def __init__(self, rnn_type: str, vocab: int, emsize: int, hidden: int, layers: int,
                 dropout: float, tie_weights: bool):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, emsize)
        self.rnn = getattr(nn, rnn_type)(emsize, hidden, layers, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)
        if tie_weights:
            if emsize != hidden:
                raise ValueError("--tied needs --emsize equal to --hidden")
            self.decoder.weight = self.encoder.weight
        self.rnn_type, self.hidden, self.layers = rnn_type, hidden, layers
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, x, hidden):  # x [T, B] -> logits [T, B, V]
        output, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(output)), hidden

    def init_hidden(self, batch_size: int):
        weight = next(self.parameters())
        h = weight.new_zeros(self.layers, batch_size, self.hidden)
        return (h, h.clone()) if self.rnn_type == "LSTM" else h


def repackage_hidden(h):
    """Detach the state from its history (TBPTT: the gradient stops here)."""
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


# ------------------------------------------------------------------------------------ loops
def evaluate(model, source, criterion, K: int, max_batches: int) -> float:
    """Mean cross-entropy over ``source`` (at most ``max_batches`` chunks), state carried."""
    model.eval()
    total, count = 0.0, 0
    hidden = model.init_hidden(source.size(1))
    with torch.no_grad():
        for batch, i in enumerate(range(0, source.size(0) - 1, K)):
            if batch == max_batches:
                break
            data, targets = get_batch(source, i, K)
            output, hidden = model(data, hidden)
            total += len(data) * criterion(output.view(-1, output.size(-1)), targets).item()
            count += len(data)
    return total / count


def train(args, model, train_data, criterion, ctl) -> None:
    """pytorch/examples' loop (plain SGD, clipping), chunk length from the controller."""
    model.train()
    hidden, i, epoch, start = model.init_hidden(args.batch_size), 0, 1, time.time()
    for batch in range(1, args.max_batches + 1):
        if i >= train_data.size(0) - 2:  # a new epoch: fresh state, from the start
            hidden, i, epoch = model.init_hidden(args.batch_size), 0, epoch + 1
        K = ctl.K  # atbptt: the truncation of this chunk (was args.bptt)
        data, targets = get_batch(train_data, i, K)
        hidden = repackage_hidden(hidden)
        model.zero_grad()
        output, hidden = model(data, hidden)
        loss = criterion(output.view(-1, output.size(-1)), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-args.lr)
        if ctl.step(len(data)):  # atbptt: may re-estimate K (the if only prints it)
            print(f"| estimate {ctl.num_estimates_done:3d} | batch {batch:5d} | K {ctl.K:4d} | "
                  f"delta_hat(K) {ctl.delta_hat:.4f} | K_hat {ctl.K_hat:4d} | beta_hat "
                  f"{ctl.beta_hat:.4f} | {ctl.estimate.seconds:.2f} s", flush=True)
        i += len(data)
        if batch % args.log_interval == 0:
            print(f"| epoch {epoch:3d} | batch {batch:5d} | K {K:4d} | loss {loss.item():6.3f} | "
                  f"ppl {math.exp(loss.item()):9.2f} | {time.time() - start:7.1f} s", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(os.environ.get("ATBPTT_DATA", "data")) / "ptb"
    p.add_argument("--data", type=Path, default=default_data,
                   help="folder of ptb.{train,valid,test}.txt")
    p.add_argument("--model", default="LSTM", choices=["LSTM", "GRU"])
    p.add_argument("--emsize", type=int, default=200)
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--tied", action="store_true")
    p.add_argument("--lr", type=float, default=20.0)
    p.add_argument("--clip", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--max-batches", type=int, default=2000, help="training updates")
    p.add_argument("--max-eval-batches", type=int, default=10**9, help="chunks per evaluation")
    p.add_argument("--log-interval", type=int, default=100)
    p.add_argument("--seed", type=int, default=1111)
    # the estimator (docs/library.md)
    p.add_argument("--delta", type=float, default=0.1, help="tolerated relative gradient bias")
    p.add_argument("--K0", type=int, default=35, help="K until the first estimate")
    p.add_argument("--window", type=int, default=100, help="W, lags profiled")
    p.add_argument("--num-windows", type=int, default=32, help="S, windows per profile")
    p.add_argument("--k-min", type=int, default=5)
    p.add_argument("--k-max", type=int, default=100)
    p.add_argument("--reestimate-every", type=int, default=1000, help="time steps")
    p.add_argument("--grad-norm-bound", default="norm_sum", choices=["grad", "norm_sum"])
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    corpus = Corpus(args.data)
    train_data = batchify(corpus.train, args.batch_size)
    model = WordLM(args.model, len(corpus.words), args.emsize, args.hidden, args.layers,
                   args.dropout, args.tied)
    criterion = nn.CrossEntropyLoss()
    ctl = AdaptiveTruncation(model, train_data[:-1], train_data[1:], criterion, delta=args.delta,
                             K0=args.K0, window=args.window, num_windows=args.num_windows,
                             k_min=args.k_min, k_max=args.k_max,
                             reestimate_every=args.reestimate_every,
                             grad_norm_bound=args.grad_norm_bound, seed=args.seed)
    start = time.time()
    train(args, model, train_data, criterion, ctl)
    train_time = time.time() - start
    valid = evaluate(model, batchify(corpus.valid, 10), criterion, 35, args.max_eval_batches)
    test = evaluate(model, batchify(corpus.test, 10), criterion, 35, args.max_eval_batches)
    print(f"| end | valid ppl {math.exp(valid):9.2f} | test ppl {math.exp(test):9.2f} | "
          f"K {ctl.K} | estimates {ctl.num_estimates_done} | estimator {ctl.seconds:.1f} s of "
          f"{train_time:.1f} s training", flush=True)


if __name__ == "__main__":
    main()
