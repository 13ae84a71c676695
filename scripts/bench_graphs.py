"""CUDA graphs of the training step against the eager step (``atbptt.graphs``), tokens/s.

    python scripts/bench_graphs.py                       # on a CUDA GPU: LSTM 1x200 and 1x900
    python scripts/bench_graphs.py --device cpu --quick  # dry run: the same code, no graphs

Per model size (LSTM 1xH, tied, dropout 0.2, 10k vocabulary, batch 32, lean overlap style,
lr 10 sqrt(K), clip 1/K, weight decay 1e-7: the PTB presets) and K, the same chunks are trained
(a) by replaying one CUDA graph per K (``StepGraphs``: forward, loss, backward, clipping and
foreach SGD captured) and (b) eagerly, as the Trainer's step without graphs; with ``--bf16``
also (c) graphs under bfloat16 autocast against (b). Paired rounds (``bench.paired``), so the
ratio holds on a busy machine. On the CPU (``--device cpu``) there are no graphs: the step
function is run eagerly on its static buffers (``graphs.eager_capture``), which checks the
plumbing and shows its overhead, not a speed-up.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import _sync, make_setup, paired, print_table  # noqa: E402

from atbptt import graphs  # noqa: E402
from atbptt.config import Style  # noqa: E402
from atbptt.tbptt import Walker, chunk_forward, sequence_loss  # noqa: E402

LR, CLIP, WD = 10.0, 1.0, 1e-7


def eager_chunks(model, split, K, device, chunks, bf16=False) -> float:
    """Seconds for ``chunks`` eager training steps (the Trainer's step without graphs)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR * K ** 0.5, weight_decay=WD)
    walker = _steady_walker(model, split, K, device)
    start = time.perf_counter()
    for _ in range(chunks):
        optimizer.zero_grad(set_to_none=True)
        with graphs.autocast(torch.device(device), bf16):
            loss, _ = chunk_forward(model, split, walker, K, Style.overlap, sequence_loss(True),
                                    device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP / K)
        optimizer.step()
    _sync(device)
    return time.perf_counter() - start


def graphed_chunks(steps: "graphs.StepGraphs", model, split, K, device, chunks) -> float:
    """Seconds for ``chunks`` replayed steps (the graph of K captured before the clock starts)."""
    walker = _steady_walker(model, split, K, device)
    if K not in steps.cache:
        steps.step(split, walker, K)
        walker = _steady_walker(model, split, K, device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(chunks):
        if steps.step(split, walker, K) is None:
            raise RuntimeError(f"chunk at {walker.pos} of K={K} was not replayed")
    _sync(device)
    return time.perf_counter() - start


def _steady_walker(model, split, K, device) -> Walker:
    """A walker K - 1 steps into the split, its state the zero state: every chunk from there
    has the steady shape a graph replays."""
    return Walker(K - 1, 0, model.init_state(split.num_streams, device))


def rows_for(hidden: int, K: int, args) -> List[tuple]:
    device = args.device
    model, split = make_setup(hidden, args.vocab, args.batch, K * (args.chunks + 2), device)
    model.train()
    capture = graphs.cuda_capture() if device == "cuda" else graphs.eager_capture
    steps = graphs.StepGraphs(model, list(model.parameters()), style=Style.overlap,
                              loss_fn=sequence_loss(True), lr=lambda k: LR * k ** 0.5, clip=CLIP,
                              weight_decay=WD, device=torch.device(device), capture=capture)
    tokens = K * args.chunks * args.batch
    kind = "graphs" if device == "cuda" else "static buffers, no graph (CPU)"
    label = f"overlap K={K}, LSTM 1x{hidden}, batch {args.batch}"
    t_ours, t_base, ratio = paired(
        lambda: graphed_chunks(steps, model, split, K, device, args.chunks),
        lambda: eager_chunks(model, split, K, device, args.chunks), args.rounds)
    target = {200: ">= 2x", 900: ">= 1.3x"}.get(hidden, "") if device == "cuda" else ""
    rows = [(f"{label}: {kind} vs eager, tokens/s", tokens / t_ours, tokens / t_base, ratio,
             target)]
    if args.bf16 and device == "cuda":
        half = graphs.StepGraphs(model, list(model.parameters()), style=Style.overlap,
                                 loss_fn=sequence_loss(True), lr=lambda k: LR * k ** 0.5,
                                 clip=CLIP, weight_decay=WD, device=torch.device(device),
                                 capture=capture, bf16=True)
        t_ours, t_base, ratio = paired(
            lambda: graphed_chunks(half, model, split, K, device, args.chunks),
            lambda: eager_chunks(model, split, K, device, args.chunks), args.rounds)
        rows.append((f"{label}: graphs + bf16 autocast vs eager float32, tokens/s",
                     tokens / t_ours, tokens / t_base, ratio, ""))
    return rows


def table_rows(args) -> List[tuple]:
    """Rows for scripts/bench.py (label, ours, baseline, baseline/ours, target)."""
    return [row for hidden in args.sizes for K in args.Ks for row in rows_for(hidden, K, args)]


def configure(args) -> None:
    if args.quick:
        args.sizes, args.Ks, args.vocab = [16], [5], 50
        args.batch, args.chunks, args.rounds = 4, 3, 1
    else:
        args.vocab, args.batch = 10_000, 32
        args.chunks, args.rounds = args.chunks or 20, args.rounds or 5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--hidden", dest="sizes", type=int, nargs="+", default=[200, 900])
    p.add_argument("--K", dest="Ks", type=int, nargs="+", default=[35])
    p.add_argument("--chunks", type=int, default=0, help="chunks per round (default 20)")
    p.add_argument("--rounds", type=int, default=0, help="paired rounds (default 5)")
    p.add_argument("--bf16", action="store_true", help="also graphs under bfloat16 autocast")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    configure(args)
    print_table(table_rows(args), args.device)


if __name__ == "__main__":
    main()
