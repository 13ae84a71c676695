"""Benchmarks with ratios against baselines timed in the same process (``make bench``).

Shared machines are noisy: every benchmark interleaves ours and the baseline over several
rounds and reports medians, so the ratio is meaningful even when absolute times drift.

  1. lean overlap TBPTT vs decoding all 2K-1 steps (the authors' way), tokens/s, K = 35
  2. 'chunk' style vs a plain pytorch/examples-style loop; the fused loss alone vs torch's
  3. gradient-norm profile vs the authors' chained backward and vs one TBPTT(W) step
     (scripts/bench_profile.py)
  4. peak memory of one overlap training step for K in {10, 50, 100, 200, 300}
  5. ARTBP (random truncation, mean length 35, segments through the fused kernel with the
     compensation in the backward pass) vs fixed TBPTT with K = 35 in 'chunk' and in 'overlap'
     style, and vs ARTBP one step at a time, tokens/s over the same tokens
  6. CUDA graphs of the training step vs the eager step, LSTM 1x200 and 1x900 (CUDA; on the
     CPU only with --quick, as a dry run): scripts/bench_graphs.py
  7. a K update of the LM procedure (5 estimates) together vs apart, and its share of
     train_time in the ptb_cpu delta=0.1 setting: scripts/bench_estimator.py
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable, List

import atbptt  # noqa: F401  (before torch: huge-page CPU allocation, see atbptt/__init__.py)
import torch

from atbptt import artbp
from atbptt.config import Cell, Style
from atbptt.data import Split
from atbptt.models import ModelSpec, RNNModel, detach_state
from atbptt.tbptt import Walker, chunk_forward, cross_entropy, sequence_loss


def make_setup(hidden: int, vocab: int, batch: int, length: int, device: str):
    torch.manual_seed(0)
    spec = ModelSpec(Cell.lstm, vocab, vocab, True, hidden, 1, hidden, 0.2, True)
    model = RNNModel(spec).to(device)
    ids = torch.randint(0, vocab, (length + 1, batch))
    return model, Split(ids[:-1], ids[1:])


def torch_loss(out, y):
    """The stock loss of a straightforward implementation (``nn.CrossEntropyLoss``)."""
    return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def train_steps(model, split, K, style, device, chunks, decode_burn_in=False,
                loss_fn=None) -> float:
    """Seconds for ``chunks`` training chunks (forward, backward, clip, SGD step); the loss is
    ours (``sequence_loss``, fused backward) unless ``loss_fn`` is given."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = loss_fn or sequence_loss(True)
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


def artbp_steps(model, split, schedule, device, seed: int = 0, fused: bool = True) -> float:
    """Seconds for ARTBP over the whole split (segments drawn from a generator seeded with
    ``seed``, so every round trains on the same segments), with the same update as above;
    ``fused``: the segment through the fused kernel (else one step at a time)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn, walker = sequence_loss(True), Walker.start(model, split.num_streams, device)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    while walker.pos < split.length:
        opt.zero_grad(set_to_none=True)
        loss, _ = artbp.next_segment(model, split, walker, schedule, loss_fn, device, generator,
                                     fused)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0 / schedule.mean_length)
        opt.step()
    _sync(device)
    return time.perf_counter() - start


def bench_artbp(args, device) -> List[tuple]:
    """ARTBP at mean length K against fixed TBPTT(K) on the same tokens (K * 3 * chunks steps).

    Each round draws its segments from its own seed (0, 1, 2, ...), so that the number of
    segments, hence of SGD steps, averages out over the rounds as it does over an epoch (one
    short split can draw many more segments than chunks); the label gives the mean count."""
    K, chunks = 35, 3 * args.chunks
    model, split = make_setup(args.hidden, args.vocab, args.batch, K * chunks, device)
    tokens, schedule = K * chunks * args.batch, artbp.Schedule(float(K))
    counts = [_segments(schedule, split.length, seed) for seed in range(args.rounds + 1)]
    seeds = {"fused": iter(range(10**6)), "stepwise": iter(range(10**6))}

    def ours(kind="fused"):
        return lambda: artbp_steps(model, split, schedule, device, next(seeds[kind]) % len(counts),
                                   fused=kind == "fused")

    rows, label = [], f"{sum(counts) / len(counts):.1f} segments vs {chunks} chunks"
    for style in (Style.chunk, Style.overlap):
        seeds["fused"] = iter(range(10**6))
        t_ours, t_base, ratio = paired(
            ours(), lambda: train_steps(model, split, K, style, device, chunks), args.rounds)
        target = ">= 0.95x CPU, >= 0.5x GPU" if style == Style.chunk else ""
        rows.append((f"ARTBP mean K={K} (c=1/{K}) vs fixed {style.value} K={K} ({label}), tokens/s",
                     tokens / t_ours, tokens / t_base, ratio, target))
    seeds["fused"] = iter(range(10**6))
    t_ours, t_base, ratio = paired(ours(), ours("stepwise"), args.rounds)
    rows.append((f"ARTBP mean K={K}: fused segments vs one step at a time, tokens/s",
                 tokens / t_ours, tokens / t_base, ratio, ""))
    return rows


def _segments(schedule, length: int, seed: int) -> int:
    """How many segments the draws of ``seed`` cut a split of ``length`` steps into."""
    generator, pos, count = torch.Generator().manual_seed(seed), 0, 0
    while pos < length:
        pos += artbp.draw_length(schedule, length - pos, generator)
        count += 1
    return count


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


def paired(ours: Callable[[], float], base: Callable[[], float], rounds: int) -> tuple:
    """(median seconds of ours, of the baseline, median of the per-round ratios base/ours).

    One warm-up round, then ``rounds`` rounds that run both back to back, in alternating
    order, so that load drifting on a shared machine hits both alike; the ratio of each
    round is taken before the median, which is what makes it robust to slow minutes."""
    ours_t: List[float] = []
    base_t: List[float] = []
    for r in range(rounds + 1):
        if r % 2:
            b, o = base(), ours()
        else:
            o, b = ours(), base()
        if r > 0:
            ours_t.append(o)
            base_t.append(b)
    ratios = [b / o for o, b in zip(ours_t, base_t)]
    return statistics.median(ours_t), statistics.median(base_t), statistics.median(ratios)


def bench_overlap(args, device) -> List[tuple]:
    K, chunks = 35, args.chunks
    model, split = make_setup(args.hidden, args.vocab, args.batch, K * (chunks + 2), device)
    tokens = K * chunks * args.batch

    def overlap(decode_all=False, loss_fn=None):
        return lambda: train_steps(model, split, K, Style.overlap, device, chunks,
                                   decode_all, loss_fn)

    rows = []
    for label, ours, base, target in (
            ("ours (lean) vs the authors' way (decode all 2K-1, torch CE)",
             overlap(), overlap(True, torch_loss), ">= 1.6x"),
            ("lean vs decode all 2K-1, same loss (decoder saving only)",
             overlap(), overlap(True), "FLOP bound 1.74x")):
        t_ours, t_base, ratio = paired(ours, base, args.rounds)
        rows.append((f"overlap K={K}: {label}", tokens / t_ours, tokens / t_base, ratio, target))
    t_ours, t_base, ratio = paired(
        lambda: train_steps(model, split, K, Style.chunk, device, chunks),
        lambda: examples_loop(model, split, K, device, chunks), args.rounds)
    rows.append((f"chunk K={K}: ours vs pytorch/examples loop", tokens / t_ours, tokens / t_base,
                 ratio, ">= 0.9x"))
    return rows


def bench_loss(args, device) -> List[tuple]:
    """The training loss alone, forward and backward, on the logits of one K=35 chunk."""
    K = 35
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(K * args.batch, args.vocab, generator=g).to(device).requires_grad_()
    target = torch.randint(0, args.vocab, (K * args.batch,), generator=g).to(device)

    def timed(loss_fn):
        def go() -> float:
            start = time.perf_counter()
            for _ in range(args.chunks):
                logits.grad = None
                loss_fn(logits, target).backward()
            _sync(device)
            return time.perf_counter() - start
        return go

    t_ours, t_base, ratio = paired(timed(cross_entropy), timed(torch.nn.functional.cross_entropy),
                                   args.rounds)
    return [(f"loss alone, fwd+bwd [{K * args.batch}x{args.vocab}]: fused vs F.cross_entropy (s)",
             t_ours / args.chunks, t_base / args.chunks, ratio, "")]


def peak_memory(args, device) -> List[tuple]:
    """Peak memory of an overlap training step (two steps, so the optimizer state exists):
    max allocated on CUDA; on CPU the peak RSS of a fresh process per K (``ru_maxrss`` only
    ever grows, so measuring in this process would report the earlier benchmarks' peak), with
    the growth over the RSS before the first step in brackets."""
    rows = []
    for K in args.memory_K:
        if device == "cuda":
            model, split = make_setup(args.hidden, args.vocab, args.batch, 2 * K + 1, device)
            torch.cuda.reset_peak_memory_stats()
            train_steps(model, split, K, Style.overlap, device, 2)
            rows.append((f"peak memory, overlap step K={K} (MiB allocated)",
                         torch.cuda.max_memory_allocated() / 2**20, None, None, ""))
            continue
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            peak, before = pool.apply(_cpu_step_rss, (args.hidden, args.vocab, args.batch, K))
        rows.append((f"peak memory, overlap step K={K} (MiB RSS; +{peak - before:.0f} in the step)",
                     peak, None, None, ""))
    return rows


def _cpu_step_rss(hidden: int, vocab: int, batch: int, K: int) -> tuple:
    """(peak RSS, RSS before the first step) in MiB, in a fresh process."""
    torch.set_num_threads(1)
    model, split = make_setup(hidden, vocab, batch, 2 * K + 1, "cpu")
    before = _peak_rss_mib()
    train_steps(model, split, K, Style.overlap, "cpu", 2)
    return _peak_rss_mib(), before


def _peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM on Linux (reset by exec, unlike ``ru_maxrss``, which a
    spawned child inherits from its parent), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _script(name: str):
    """One of the benchmark scripts beside this one, as a module."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def profile_rows(args) -> List[tuple]:
    return _script("bench_profile").table_rows(quick=args.quick)


def estimator_rows(args) -> List[tuple]:
    """scripts/bench_estimator.py: a K update's estimates together vs apart, and its share of
    train_time (LSTM 1x200; on CUDA also 1x900)."""
    module = _script("bench_estimator")
    sub = argparse.Namespace(quick=args.quick, rounds=0,
                             sizes=[200, 900] if args.device == "cuda" else [200])
    module.configure(sub)
    return module.table_rows(sub, args.device)


def graph_rows(args) -> List[tuple]:
    """scripts/bench_graphs.py: CUDA graphs vs eager at 1x200 and 1x900 (on the CPU only with
    --quick, as a dry run of the same code without graphs)."""
    module = _script("bench_graphs")
    sub = argparse.Namespace(quick=args.quick, device=args.device, sizes=[200, 900], Ks=[35],
                             chunks=0, rounds=0, bf16=args.device == "cuda")
    module.configure(sub)
    return module.table_rows(sub)


def print_table(rows: List[tuple], device: str) -> None:
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = platform.processor() or platform.machine()
    print(f"\ndevice: {device} ({name}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print("units: overlap/chunk rows tokens/s (higher is better), loss and profile rows seconds,"
          " memory MiB; ratio = ours' speed over the baseline's (median of paired rounds)")
    width = max(len("benchmark"), *(len(r[0]) for r in rows))
    print(f"{'benchmark':{width}s}  {'ours':>10s}  {'baseline':>10s}  {'ratio':>7s}  target")
    for label, ours, base, ratio, target in rows:
        b = f"{base:10.3f}" if base is not None else " " * 10
        r = f"{ratio:6.2f}x" if ratio is not None else " " * 7
        print(f"{label:{width}s}  {ours:10.3f}  {b}  {r}  {target}".rstrip())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    p.add_argument("--skip-profile", action="store_true")
    p.add_argument("--skip-estimator", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    args.hidden, args.vocab, args.batch = (32, 500, 8) if args.quick else (200, 10000, 32)
    args.chunks, args.rounds = (3, 1) if args.quick else (6, 9)
    args.memory_K = [10, 50] if args.quick else [10, 50, 100, 200, 300]
    rows = (bench_overlap(args, args.device) + bench_loss(args, args.device)
            + bench_artbp(args, args.device) + peak_memory(args, args.device))
    if args.device == "cuda" or args.quick:
        rows += graph_rows(args)
    if not args.skip_estimator:
        rows += estimator_rows(args)
    if not args.skip_profile:
        rows += profile_rows(args)
    print_table(rows, args.device)


if __name__ == "__main__":
    main()
