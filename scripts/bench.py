"""Benchmarks with ratios against baselines timed in the same process (``make bench``).

Shared machines are noisy: every benchmark interleaves ours and the baseline over several
rounds and reports medians, so the ratio is meaningful even when absolute times drift.

  1. lean overlap TBPTT vs decoding all 2K-1 steps (the authors' way), tokens/s, K = 35
  2. 'chunk' style vs a plain pytorch/examples-style loop
  3. gradient-norm profile vs the authors' chained backward and vs one TBPTT(W) step
     (scripts/bench_profile.py)
  4. peak memory of one overlap training step for K in {10, 50, 100, 200, 300}
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from atbptt.config import Cell, Style
from atbptt.data import Split
from atbptt.models import ModelSpec, RNNModel, detach_state
from atbptt.tbptt import Walker, chunk_forward, sequence_loss


def make_setup(hidden: int, vocab: int, batch: int, length: int, device: str):
    torch.manual_seed(0)
    model = RNNModel(ModelSpec(Cell.lstm, vocab, vocab, True, hidden, 1, hidden, 0.2, True)).to(device)
    ids = torch.randint(0, vocab, (length + 1, batch))
    return model, Split(ids[:-1], ids[1:])


def train_steps(model, split, K, style, device, chunks, decode_burn_in=False) -> float:
    """Seconds for ``chunks`` training chunks (forward, backward, clip, SGD step)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = sequence_loss(True)
    walker = Walker.start(model, split.num_streams, device)
    start = time.perf_counter()
    for _ in range(chunks):
        opt.zero_grad(set_to_none=True)
        loss, _ = chunk_forward(model, split, walker, K, style, loss_fn, device, decode_burn_in)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0 / K)
        opt.step()
    _sync(device)
    return time.perf_counter() - start


def examples_loop(model, split, K, device, chunks) -> float:
    """The pytorch/examples word_language_model loop: chunks of K, state repackaged."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = torch.nn.CrossEntropyLoss()
    hidden = model.init_state(split.num_streams, device)
    start = time.perf_counter()
    for i in range(0, chunks * K, K):
        data = split.inputs[i:i + K].to(device)
        targets = split.targets[i:i + K].to(device).reshape(-1)
        hidden = detach_state(hidden)
        opt.zero_grad(set_to_none=True)
        output, hidden = model(data, hidden)
        loss = criterion(output.view(-1, output.shape[-1]), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0 / K)
        opt.step()
    _sync(device)
    return time.perf_counter() - start


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: Dict[str, Callable[[], float]], rounds: int) -> Dict[str, float]:
    """Median seconds of each function, run alternately (one warm-up round first)."""
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            t = fn()
            if r > 0:
                times[name].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_overlap(args, device) -> List[tuple]:
    K, chunks = 35, args.chunks
    model, split = make_setup(args.hidden, args.vocab, args.batch, K * (chunks + 2), device)
    t = interleaved({
        "lean": lambda: train_steps(model, split, K, Style.overlap, device, chunks),
        "decode_all": lambda: train_steps(model, split, K, Style.overlap, device, chunks, True),
        "chunk": lambda: train_steps(model, split, K, Style.chunk, device, chunks),
        "examples": lambda: examples_loop(model, split, K, device, chunks),
    }, args.rounds)
    tokens = K * chunks * args.batch
    return [
        (f"overlap K={K}: lean vs decode all 2K-1 (tokens/s)", tokens / t["lean"],
         tokens / t["decode_all"], t["decode_all"] / t["lean"], ">= 1.6x"),
        (f"chunk K={K}: ours vs pytorch/examples loop (tokens/s)", tokens / t["chunk"],
         tokens / t["examples"], t["examples"] / t["chunk"], ">= 0.9x"),
    ]


def peak_memory(args, device) -> List[tuple]:
    """Peak memory of one overlap training step: max allocated (CUDA) or RSS growth (CPU)."""
    rows = []
    for K in args.memory_K:
        model, split = make_setup(args.hidden, args.vocab, args.batch, 2 * K + 1, device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            train_steps(model, split, K, Style.overlap, device, 2)
            mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            train_steps(model, split, K, Style.overlap, device, 2)
            mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            mib = max(mib, before / 1024)
        rows.append((f"peak memory, overlap step K={K} (MiB)", mib, None, None, ""))
    return rows


def profile_rows(args) -> List[tuple]:
    path = Path(__file__).with_name("bench_profile.py")
    spec = importlib.util.spec_from_file_location("bench_profile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.table_rows(quick=args.quick)


def print_table(rows: List[tuple], device: str) -> None:
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"\ndevice: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'benchmark':62s} {'ours':>12s} {'baseline':>12s} {'ratio':>8s}  target")
    for label, ours, base, ratio, target in rows:
        b = f"{base:12.3f}" if base is not None else " " * 12
        r = f"{ratio:7.2f}x" if ratio is not None else " " * 8
        print(f"{label:62s} {ours:12.3f} {b} {r}  {target}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    p.add_argument("--skip-profile", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    args.hidden, args.vocab, args.batch = (32, 500, 8) if args.quick else (200, 10000, 32)
    args.chunks, args.rounds = (3, 1) if args.quick else (8, 3)
    args.memory_K = [10, 50] if args.quick else [10, 50, 100, 200, 300]
    rows = bench_overlap(args, args.device) + peak_memory(args, args.device)
    if not args.skip_profile:
        rows += profile_rows(args)
    print_table(rows, args.device)


if __name__ == "__main__":
    main()
