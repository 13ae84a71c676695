"""CUDA graphs of the TBPTT training step (``cuda.graphs``): one graph per K, an LRU cache.

At the CPU-scale model (LSTM 1×200, batch 32) a GPU spends most of a training step launching
kernels: a chunk of K new steps is a few hundred small launches (embedding, the cuDNN RNN calls,
decoder, loss, backward, clipping, SGD). ``torch.compile`` does not capture ``nn.LSTM``; a CUDA
graph does: the whole step — forward (``tbptt.chunk_forward``, either style), loss, backward,
gradient clipping at ``clip/K`` and the SGD step ``lr·K^p`` (foreach, weight decay as
``torch.optim.SGD``) — is captured once per K and then replayed as one launch.

- **Static buffers.** A graph reads its inputs from fixed tensors: the chunk's tokens (overlap:
  the 2K−1 steps from the carried state's anchor; chunk: K), its targets and the carried state;
  it writes the loss and the next carried state into fixed outputs. Each step copies the chunk
  from a device copy of the training split (made once) into those buffers, device to device,
  and the carried state in; nothing inside a step waits for the host.
- **Which steps.** Only a step of the steady shape is replayed: overlap with the carried state
  exactly K−1 steps before the chunk (so no burn-in adjustment when K changed, no short burn-in
  at an epoch's start) and a whole chunk before the split's end; chunk style with a whole chunk.
  Every other step runs eagerly, as without graphs (``step`` returns None).
- **K.** lr and the clip threshold depend on K, so there is one graph per K; adaptive runs keep
  the ``capacity`` most recently used in an LRU cache (a capture costs a warm-up and one
  capture, seconds; K changes rarely).
- **Capture.** ``cuda_capture``: warm-up forward/backward passes on a side stream (no
  parameter update), then ``torch.cuda.graph`` with the model's gradients unset, so that the
  captured backward writes fresh gradients into the graph's own memory at every replay.
  ``eager_capture`` runs the same step function eagerly on the same buffers (the CPU tests of
  the cache, buffers and fallbacks; results equal the plain eager step bit for bit).
- **bf16** (``cuda.bf16``): the forward and loss under ``torch.autocast(bfloat16)`` (the
  eager TBPTT steps of the run too; evaluation and the estimator stay in float32).
- **Switch** (``cuda.graphs``): null (auto, the default) graphs fixed and adaptive TBPTT on a
  CUDA device and falls back to eager steps, with one line on stderr, if a capture fails; true
  insists (an error without CUDA); false trains eagerly. The CPU always trains eagerly.

Dropout inside a graph draws from CUDA's graph-safe generator, so a graphed run's masks are not
those of an eager run (results agree in distribution, and to float tolerance without dropout).
"""
from __future__ import annotations

import contextlib
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from .config import Config, ConfigError, MethodName, Style
from .data import Split
from .models import RNNModel
from .tbptt import LossFn, Walker, chunk_forward

Capture = Callable[[Callable[[], None], Callable[[], None]], Callable[[], None]]


def sgd_step_(params: List[Tensor], lr: float, weight_decay: float) -> None:
    """``torch.optim.SGD(lr, weight_decay)`` without momentum, as its foreach implementation:
    ``g ← g + wd·p``, ``p ← p − lr·g`` (the same operations, so the same numbers)."""
    with torch.no_grad():
        params = [p for p in params if p.grad is not None]  # as SGD: no gradient, no step
        grads = [p.grad for p in params]
        if weight_decay != 0:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        torch._foreach_add_(params, grads, alpha=-lr)


def cuda_capture(warmup: int = 2) -> Capture:
    """Capture with ``torch.cuda.graph`` after ``warmup`` runs of ``warm`` on a side stream."""
    def capture(body: Callable[[], None], warm: Callable[[], None]) -> Callable[[], None]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                warm()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
        return graph.replay  # the bound method keeps the graph (and its memory) alive
    return capture


def eager_capture(body: Callable[[], None], warm: Callable[[], None]) -> Callable[[], None]:
    """No graph: 'replaying' runs ``body`` eagerly on the static buffers (tests, CPU)."""
    return body


@dataclass
class _Entry:
    replay: Callable[[], None]
    x: Tensor
    y: Tensor
    state_in: Tuple[Tensor, ...]
    state_out: Tuple[Tensor, ...]
    loss: Tensor


def _tensors(state) -> Tuple[Tensor, ...]:
    return tuple(state) if isinstance(state, tuple) else (state,)


class StepGraphs:
    """The graphed training step of one run (module docstring).

    ``params``: the parameters the SGD step updates (each once); ``lr(K)``: the step size;
    ``clip``: the gradient norm bound is ``clip / K``; ``capacity`` ≥ 1 graphs are kept;
    ``capture``: ``cuda_capture()`` on a GPU, ``eager_capture`` for tests. ``fallback``: a
    capture that fails is reported (one line on stderr) and the run goes on eagerly, instead of
    raising (``cuda.graphs=null``, auto). Raises ValueError on a capacity < 1."""

    def __init__(self, model: RNNModel, params: List[Tensor], *, style: Style, loss_fn: LossFn,
                 lr: Callable[[int], float], clip: float, weight_decay: float,
                 device: torch.device, capacity: int = 4, bf16: bool = False,
                 capture: Optional[Capture] = None, fallback: bool = False):
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        self.model, self.params, self.style, self.loss_fn = model, params, style, loss_fn
        self.lr, self.clip, self.weight_decay, self.device = lr, clip, weight_decay, device
        self.capacity, self.bf16, self.fallback, self.disabled = capacity, bf16, fallback, False
        self.capture = capture or cuda_capture()
        self.cache: "OrderedDict[int, _Entry]" = OrderedDict()
        self.captures = self.replays = 0
        self._split: Optional[Tuple[Split, Split]] = None  # (host split, its device copy)

    # ------------------------------------------------------------------ which steps
    def eligible(self, walker: Walker, K: int, length: int) -> bool:
        """Whether the next chunk has the steady shape that a graph replays."""
        if walker.pos + K > length:
            return False
        if self.style == Style.chunk:
            return walker.anchor == walker.pos
        return walker.pos >= K - 1 and walker.anchor == walker.pos - (K - 1)

    def step(self, split: Split, walker: Walker, K: int) -> Optional[Tuple[Tensor, int]]:
        """One training step replayed from K's graph (captured first if needed): returns the
        loss (a static tensor, overwritten by the next replay of that graph) and K, and moves
        ``walker`` on as ``chunk_forward`` does; None (nothing done) if the chunk is not of the
        steady shape."""
        if self.disabled or not self.eligible(walker, K, split.length):
            return None
        entry = self.cache.get(K)
        source = self._on_device(split)
        start = walker.pos - (K - 1) if self.style == Style.overlap else walker.pos
        if entry is not None:
            self._fill(entry, source, walker, start, K)
        else:
            try:
                entry = self._capture(K, source, walker, start)
            except Exception as err:  # noqa: BLE001 - whatever the capture refused
                if not self.fallback:
                    raise
                report_fallback(err)
                self.disabled = True
                self.cache.clear()
                for p in self.params:
                    p.grad = None
                return None
        self.cache.move_to_end(K)
        entry.replay()
        self.replays += 1
        walker.pos += K
        walker.anchor = start + K if self.style == Style.overlap else walker.pos
        walker.state = entry.state_out if len(entry.state_out) > 1 else entry.state_out[0]
        return entry.loss, K

    # ------------------------------------------------------------------ buffers
    def _on_device(self, split: Split) -> Split:
        """The training split on the device, copied once (chunks are then copied on the GPU)."""
        if self._split is None or self._split[0] is not split:
            on_device = Split(split.inputs.to(self.device), split.targets.to(self.device))
            self._split = (split, on_device)
        return self._split[1]

    def _fill(self, entry: _Entry, source: Split, walker: Walker, start: int, K: int) -> None:
        entry.x.copy_(source.inputs[start:walker.pos + K])
        entry.y[-K:].copy_(source.targets[walker.pos:walker.pos + K])
        for buf, value in zip(entry.state_in, _tensors(walker.state)):
            buf.copy_(value)

    def _capture(self, K: int, source: Split, walker: Walker, start: int) -> _Entry:
        """Static buffers for K, filled with this step's chunk; the warm-up and the capture
        (the captured step itself is not executed: the caller replays it)."""
        while len(self.cache) >= self.capacity:
            self.cache.popitem(last=False)
        x = source.inputs[start:walker.pos + K].clone()
        y = source.targets[start:walker.pos + K].clone()
        state_in = tuple(t.detach().clone() for t in _tensors(walker.state))
        state_out = tuple(torch.empty_like(t) for t in state_in)
        loss_out = torch.zeros((), device=self.device)
        burn = walker.pos - start

        def forward():
            inner = Walker(burn, 0, state_in if len(state_in) > 1 else state_in[0])
            with self._autocast():
                loss, _ = chunk_forward(self.model, Split(x, y), inner, K, self.style,
                                        self.loss_fn, self.device)
            return loss, inner.state

        def warm() -> None:
            for p in self.params:
                p.grad = None
            loss, _ = forward()
            loss.backward()
            for p in self.params:
                p.grad = None

        def body() -> None:
            for p in self.params:  # unset: the backward writes fresh gradients, never adds
                p.grad = None
            loss, carried = forward()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.clip / K)
            sgd_step_(self.params, self.lr(K), self.weight_decay)
            loss_out.copy_(loss.detach())
            for buf, value in zip(state_out, _tensors(carried)):
                buf.copy_(value)

        replay = self.capture(body, warm)
        self.captures += 1
        entry = _Entry(replay, x, y, state_in, state_out, loss_out)
        self.cache[K] = entry
        return entry

    def _autocast(self):
        return autocast(self.device, self.bf16)


def autocast(device: torch.device, bf16: bool):
    """``torch.autocast(bfloat16)`` on ``device`` if ``bf16``, else nothing (no weight-cast
    cache: a captured graph must not keep casts made outside it)."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)


def wanted(cfg: Config, device: torch.device) -> bool:
    """Whether a run uses the graphed step: ``cuda.graphs`` true, or null (auto) on a CUDA
    device, for fixed and adaptive TBPTT (ARTBP, whose segments vary in length, runs eagerly;
    the config refuses ``cuda.graphs=true`` for it). Raises ConfigError for
    ``cuda.graphs=true`` or ``cuda.bf16=true`` without a CUDA device."""
    c = cfg.cuda
    for key, value in (("graphs", c.graphs), ("bf16", c.bf16)):
        if value is True and device.type != "cuda":
            raise ConfigError(f"cuda.{key}=true needs a CUDA device (device=cuda, or auto with "
                              f"a GPU); this run's device is {device.type}: use "
                              f"cuda.{key}={'null or false' if key == 'graphs' else 'false'}")
    return c.graphs is not False and device.type == "cuda" and cfg.method.name != MethodName.artbp


def build(cfg: Config, model: RNNModel, device: torch.device, loss_fn: LossFn,
          lr: Callable[[int], float], capture: Optional[Capture] = None) -> Optional[StepGraphs]:
    """The run's ``StepGraphs``, or None where it trains eagerly (``wanted``)."""
    if capture is None and not wanted(cfg, device):
        return None
    params = list(model.parameters())
    return StepGraphs(model, params, style=cfg.method.style, loss_fn=loss_fn, lr=lr,
                      clip=cfg.optim.clip, weight_decay=cfg.optim.weight_decay, device=device,
                      capacity=cfg.cuda.graph_cache, bf16=cfg.cuda.bf16, capture=capture,
                      fallback=cfg.cuda.graphs is None)


def report_fallback(err: Exception) -> None:
    """One line on stderr: a capture failed and the run goes on eagerly (``cuda.graphs=auto``)."""
    print(f"cuda.graphs=auto: capturing the training step failed ({type(err).__name__}: "
          f"{str(err).splitlines()[0] if str(err) else ''}); training eagerly", file=sys.stderr,
          flush=True)
