"""Time the one-backward gradient-norm profile against the alternatives (not a test).

    python scripts/bench_profile.py                # LSTM 1x200, 10k vocabulary, S=64, W=100, 400
    python scripts/bench_profile.py --quick        # tiny sizes, a few seconds (smoke test)

Benchmarks, each on the same model, windows and burn-in state, one torch thread:
  (a) ours      ``adaptive.grad_norm_profile``: step the core, decode the last step only,
                one ``torch.autograd.grad`` to every intermediate state
  (b) chained   the authors' way: forward one step at a time from a leaf copy of the state,
                decoding every step, then W single-step backward calls (retain_graph), each
                taking lag k's gradient to lag k+1, accumulating norms. Charitable: the calls
                are restricted to the state leaves (``inputs=``), no parameter gradients.
                Default CPU kernels (oneDNN LSTM), as a plain script would run.
  (b') chained  (b) on the native CPU kernels that ours uses (oneDNN's LSTM backward always
                computes weight gradients; the native one lets autograd skip them)
  (c) decode-all one backward as in (a), but decoding every step as a full forward does
  (d) TBPTT(W)  one training step: fused forward over W steps, CE on all W steps, backward
  (e) generic   a model of pytorch/examples' shape (decoder on the LSTM's output sequence),
                profiled through its plain ``forward`` (every step decoded), against the
                same model with the ``adaptive.RecurDecode`` protocol (the fast path), both
                with ``nn.CrossEntropyLoss()``
Targets: (a) at least 2x faster than (b) at W=400, and at most 0.8x of (d).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from atbptt.adaptive import grad_norm_profile, native_cpu_kernels
from atbptt.config import Cell
from atbptt.models import ModelSpec, RNNModel


def loss_per_window(out, target):
    return F.cross_entropy(out, target, reduction="none")


def _tensors(state):
    return state if isinstance(state, tuple) else (state,)


def chained_profile(model, x, y, state, loss_fn):
    """(b): W chained single-step backward calls, decoding every step."""
    W = x.shape[0]
    leaves, outs, states = [], [], []
    for t in range(W):  # forward: each step starts from a leaf copy of the previous state
        leaf = tuple(s.detach().requires_grad_() for s in _tensors(state))
        _, state = model.recur(x[t:t + 1], leaf)
        outs.append(model.decode(model.state_output(state)))  # (1, S, V), every step
        leaves.append(leaf)
        states.append(state)
    loss = loss_fn(outs[-1][0], y[-1]).sum()
    grad = torch.autograd.grad(loss, states[-1], retain_graph=True, allow_unused=True)
    grad = tuple(torch.zeros_like(s) if g is None else g for g, s in zip(grad, states[-1]))
    phi, total = [], None
    for k in range(W):  # lag k -> lag k + 1, one step per call
        g = torch.cat([t.transpose(0, 1).flatten(1) for t in grad], 1)
        phi.append(g.norm(dim=1))
        total = g.mean(0) if total is None else total + g.mean(0)
        if k + 1 < W:
            leaf = leaves[W - 1 - k]  # the copy of the lag-(k + 1) state
            torch.autograd.backward(states[W - 1 - k], grad, retain_graph=True, inputs=leaf)
            grad = tuple(s.grad for s in leaf)
    return torch.stack(phi), total.norm()


def chained_native_profile(model, x, y, state, loss_fn):
    """(b'): (b) on the same CPU kernels as ours."""
    with native_cpu_kernels():
        return chained_profile(model, x, y, state, loss_fn)


def decode_all_profile(model, x, y, state, loss_fn):
    """(c): one backward pass, but every step is decoded as a plain forward would (same
    CPU kernels as ours, so the difference is the decoding alone)."""
    with native_cpu_kernels():
        return _decode_all_profile(model, x, y, state, loss_fn)


def _decode_all_profile(model, x, y, state, loss_fn):
    W = x.shape[0]
    state = tuple(s.detach().requires_grad_() for s in _tensors(state))
    states, outs = [], []
    for t in range(W):
        _, state = model.recur(x[t:t + 1], state)
        outs.append(model.decode(model.state_output(state)))
        states.append(state)
    loss = loss_fn(outs[-1][0], y[-1]).sum()
    grads = torch.autograd.grad(loss, [s for st in states for s in st], allow_unused=True)
    grads = [torch.zeros_like(s) if g is None else g
             for g, s in zip(grads, [s for st in states for s in st])]
    g = torch.stack([torch.cat([a.transpose(0, 1).flatten(1), b.transpose(0, 1).flatten(1)], 1)
                     for a, b in zip(grads[0::2], grads[1::2])][::-1])
    return g.norm(dim=2), g.mean(1).cumsum(0).norm(dim=1)


def tbptt_step(model, x, y, state, loss_fn):
    """(d): forward W steps (fused), mean CE on all W steps, backward."""
    model.zero_grad(set_to_none=True)
    out, _ = model(x, tuple(s.detach() for s in state))
    loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    loss.backward()
    return loss


class ExamplesLM(nn.Module):
    """pytorch/examples' word language model shape: the decoder reads the output sequence."""

    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.encoder = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, 1)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, x, state):
        output, state = self.rnn(self.encoder(x), state)
        return self.decoder(output), state


class ExamplesLMFast(ExamplesLM):
    """The same model with the ``RecurDecode`` protocol: three one-line methods."""

    def recur(self, x, state):
        return self.rnn(self.encoder(x), state)

    def decode(self, hidden):
        return self.decoder(hidden)

    @staticmethod
    def state_output(state):
        return state[0][-1:]  # top layer of h_n: lag 0 is the state after the last step


FAST = "RecurDecode fast path"


def measure_protocol(windows, lags, hidden, vocab, repeats):
    """(e): the fast path of a protocol module vs the generic path; (W, label, fast, generic)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    generic = ExamplesLM(vocab, hidden).eval()
    fast = ExamplesLMFast(vocab, hidden).eval()
    fast.load_state_dict(generic.state_dict())
    rows = []
    for W in lags:
        x, y = torch.randint(0, vocab, (W, windows)), torch.randint(0, vocab, (W, windows))
        state = (torch.randn(1, windows, hidden) * 0.1, torch.randn(1, windows, hidden) * 0.1)
        run = {name: (lambda m=m: grad_norm_profile(m, x, y, state, nn.CrossEntropyLoss()))
               for name, m in (("fast", fast), ("generic", generic))}
        run["fast"]()  # warm-up
        t_fast, p_fast = best_time(run["fast"], repeats)
        t_generic, p_generic = best_time(run["generic"], repeats)
        # lag k entering the last step is lag k + 1 after it (module docstring of adaptive)
        torch.testing.assert_close(p_fast.phi[1:], p_generic.phi[:-1], rtol=1e-3, atol=1e-12)
        rows.append((W, f"{FAST} vs (e) generic forward, pytorch/examples-shaped LSTM",
                     t_fast, t_generic))
    return rows


def best_time(fn, repeats):
    """Best wall clock of ``repeats`` calls, and the last call's result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def measure(windows, lags, hidden, vocab, repeats):
    """Times of (a) ours and the baselines for each W; returns (W, label, ours, baseline) rows."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = ModelSpec(Cell.lstm, vocab, vocab, token_inputs=True,
                     hidden_size=hidden, num_layers=1, embedding_size=hidden)
    model = RNNModel(spec)
    rows = []
    for W in lags:
        x = torch.randint(0, vocab, (W + 10, windows))
        y = torch.randint(0, vocab, (W + 10, windows))
        model.eval()
        with torch.no_grad():  # a burn-in state, as the estimator uses
            _, state = model.recur(x[:10], model.init_state(windows))
        x, y = x[10:], y[10:]
        run = {name: (lambda f=f: f(model, x, y, state, loss_per_window))
               for name, f in [("ours", grad_norm_profile), ("chained", chained_profile),
                               ("chained_native", chained_native_profile),
                               ("decode_all", decode_all_profile), ("tbptt", tbptt_step)]}
        run["ours"]()  # warm-up
        t, phi = {}, {}
        for name in ("ours", "chained", "chained_native", "decode_all"):
            t[name], (phi[name], _) = best_time(run[name], repeats)
        for name in ("chained", "chained_native", "decode_all"):  # the profiles must agree
            torch.testing.assert_close(phi[name].double(), phi["ours"], rtol=1e-3, atol=1e-9)
        model.train()
        t["tbptt"], _ = best_time(run["tbptt"], repeats)
        for name, label in [("chained", "(b) chained single-step backward"),
                            ("chained_native", "(b') chained, native CPU kernels"),
                            ("decode_all", "(c) one backward, decode every step"),
                            ("tbptt", "(d) one TBPTT(W) training step")]:
            rows.append((W, label, t["ours"], t[name]))
    return rows


def table_rows(quick: bool = False):
    """Rows for scripts/bench.py: (label, ours, baseline, baseline/ours, target)."""
    sizes = (8, [10, 20], 16, 50, 1) if quick else (64, [100, 400], 200, 10_000, 3)
    out = []
    for W, label, ours, base in measure(*sizes) + measure_protocol(*sizes):
        target = {"(b)": ">= 2x at W=400", "(d)": ">= 1.25x (<= 0.8x time)"}.get(label[:3], "")
        text = label if label.startswith(FAST) else f"vs {label}"
        out.append((f"profile W={W} (s): {text}", ours, base, base / ours, target))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=64, help="S, windows per profile")
    parser.add_argument("--lags", type=int, nargs="+", default=[100, 400], help="W values")
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.windows, args.lags, args.hidden, args.vocab, args.repeats = 8, [10, 20], 16, 50, 1
    print(f"LSTM 1x{args.hidden}, vocabulary {args.vocab}, S={args.windows}, "
          f"torch threads 1, best of {args.repeats}")
    sizes = (args.windows, args.lags, args.hidden, args.vocab, args.repeats)
    rows = measure(*sizes) + measure_protocol(*sizes)
    print(f"{'benchmark':55s} {'ours (s)':>9s} {'baseline (s)':>13s} {'ratio':>7s}")
    for W, label, ours, base in rows:
        text = label if label.startswith(FAST) else f"(a) vs {label}"
        print(f"{f'W={W} {text}':55s} {ours:9.3f} {base:13.3f} {ours / base:7.3f}")


if __name__ == "__main__":
    main()
