"""Anticipated Reweighted Truncated Backpropagation (ARTBP): unbiased random truncation.

Source: C. Tallec, Y. Ollivier, *Unbiasing Truncated Backpropagation Through Time* (2017,
arXiv 1705.08209). Truncated BPTT cuts the backward pass at fixed places, which biases the
gradient. ARTBP cuts it at random places instead and reweights what is not cut:

- at every draw point a Bernoulli variable with probability ``c_n`` decides whether the
  gradient flow is cut there (the paper's truncation probabilities);
- where the draw says 'do not cut', the gradient that flows back across that transition is
  multiplied by the compensation factor ``1 / (1 - c_n)``.

A loss term's gradient at lag k crosses k transitions; it survives only if none of them was cut
(probability ``prod (1 - c_n)``) and then carries ``prod 1 / (1 - c_n)``, so its expectation is
the full-BPTT term and the estimate is unbiased, at the price of variance. The draws are
made ahead of the forward pass ('anticipated'), so the forward runs exactly up to the next cut.

How this code runs it (on the streams of ``atbptt.tbptt``):

- **Segments.** Training proceeds segment by segment: a segment starts at a cut (the carried
  state detached, as in 'chunk' style TBPTT) and ends at the next cut; one SGD step per segment.
  One draw sequence is shared by all B streams (they move in lockstep, as the chunks of fixed
  TBPTT do); each stream's gradient is unbiased on its own. The last segment of an epoch ends
  with the data (the state is reset there, so nothing is cut).
- **Draw points.** Truncation points may fall every ``stride`` steps after a cut
  (``stride = 1``: every step, the paper's scheme; ``c_n = 0`` in between is an instance of the
  paper's general ``c_t``). The compensation is applied at each draw point that said 'do not
  cut', to the state entering the next step (identity forward, ``grad * factor`` backward).
- **Fused or stepwise.** A segment's length is drawn before it runs, so every transition's
  compensation is known in advance (``step_factors``): by default (``fused=True``,
  ``method.artbp_fused``) each layer of the segment runs through the fused recurrent kernel
  with a backward pass that applies the factors (``atbptt.artbp_fused``); ``fused=False`` runs
  the core fused between draw points and ``compensate``s the state between the runs (one step
  at a time for ``stride = 1``). Both give the same gradient up to float rounding and draw the
  same random numbers.
- **Schedules** (``constant``, ``poly``): ``c_n`` and the segment lengths it gives are in
  ``atbptt.artbp_schedule`` (``Schedule``, ``length_distribution``, ``draw_length``,
  ``last_cut_distribution``, re-exported here).
- **Loss and step.** The segment's loss is the sum over its L steps of the per-step loss
  (mean over streams) divided by K, i.e. the chunk's mean loss times ``L / K``: every step
  keeps the fixed weight ``1 / K`` whatever the draws, which unbiasedness needs (dividing by the
  realised L would weight a step by a function of the draws). Clip ``clip / K`` and step
  ``lr * K^p`` use the same K, so ARTBP at mean length K makes, per epoch on average, as many
  updates of the same size as fixed TBPTT(K) (NOTES §4).
- **Variance** (the diagnostic the runner logs): ``window_gradient``, ARTBP's gradient on a
  window for a given last cut; ``relative_variance``, its spread around the full-window gradient.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from . import artbp_fused, readout
from .artbp_schedule import (  # noqa: F401  (re-exported: the schedules and their lengths)
    Schedule, draw_length, last_cut_distribution, length_distribution)
from .data import Split
from .models import RNNModel, State, detach_state
from .tbptt import Walker

LossFn = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------- forward

class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``factor`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def compensate(state: State, factor: float) -> State:
    """The state entering a transition whose draw said 'do not cut': unchanged values,
    incoming gradient (every layer's h, and c for an LSTM) multiplied by ``factor``."""
    if isinstance(state, tuple):
        return tuple(_ScaleGrad.apply(s, factor) for s in state)
    return _ScaleGrad.apply(state, factor)


def step_factors(schedule: Schedule, length: int) -> List[float]:
    """The scale of the gradient entering each step s of a segment of ``length`` steps:
    ``compensate``'s at the n-th draw point (s = n·stride, factor ``schedule.factor(n)``), 1 at
    every other step and at s = 0 (the cut). Read off ``compensate`` through one probe, so that
    the fused path applies exactly what the stepwise one applies between its runs."""
    factors = [1.0] * length
    points = list(range(schedule.stride, length, schedule.stride))
    if points:
        with torch.enable_grad():
            probe = torch.ones(len(points), dtype=torch.float64, requires_grad=True)
            scale = torch.tensor([schedule.factor(n) for n in range(1, len(points) + 1)],
                                 dtype=torch.float64)
            (grad,) = torch.autograd.grad(compensate(probe, scale).sum(), probe)
        for step, value in zip(points, grad.tolist()):
            factors[step] = value
    return factors


def run_segment(model: RNNModel, emb: Tensor, state: State, schedule: Optional[Schedule],
                fused: bool = True) -> Tuple[Tensor, State]:
    """The recurrent core over one segment, ``emb [L, B, E]`` from ``state`` (its cut), the
    gradient compensated at each draw point (``schedule=None``: one fused run, plain BPTT).
    ``fused``: one fused kernel pass per layer with the compensation in its backward
    (``artbp_fused``, where ``artbp_fused.supported``); else fused runs between draw points
    with ``compensate`` between them. Returns the top-layer hidden ``[L, B, H]`` and the last
    state."""
    length = emb.shape[0]
    if (schedule is not None and fused and length > 1
            and artbp_fused.supported(model.core)):
        return artbp_fused.fused_core(model.core, emb, state, step_factors(schedule, length))
    stride = length if schedule is None else schedule.stride
    pieces, start = [], 0
    for n, stop in enumerate([*range(stride, length, stride), length]):
        if n > 0:
            state = compensate(state, schedule.factor(n))
        hidden, state = model.core(emb[start:stop], state)
        pieces.append(hidden)
        start = stop
    return (torch.cat(pieces) if len(pieces) > 1 else pieces[0]), state


def segment_forward(model: RNNModel, split: Split, walker: Walker, schedule: Schedule,
                    length: int, loss_fn: LossFn, device, fused: bool = True) -> Tuple[Tensor, int]:
    """Forward one segment of ``length`` steps from ``walker`` (its state is the cut);
    ``fused`` as in ``run_segment``, and with it a segment longer than
    ``readout.slice_steps`` is decoded and scored slice by slice (``readout.sliced_loss``: the
    same loss and gradients up to rounding, one slice's logits in memory).

    Returns the loss (with graph), ``loss_fn``'s mean over the segment times ``length / K``
    (every step weighted 1/K), and ``length``. Advances the walker to the next segment, state
    detached. Raises ValueError if the segment does not fit in the split."""
    pos = walker.pos
    if not 1 <= length <= split.length - pos:
        raise ValueError(f"a segment of {length} steps does not fit at {pos} of {split.length}")
    x = split.inputs[pos:pos + length].to(device, non_blocking=True)
    y = split.targets[pos:pos + length].to(device, non_blocking=True)
    hidden, state = run_segment(model, model.embed(x), walker.state, schedule, fused)
    walker.pos = walker.anchor = pos + length
    walker.state = detach_state(state)
    steps = readout.slice_steps(y.shape[1], model.spec.output_size)
    if fused and length > steps:  # a long segment: decoder and loss slice by slice
        loss = readout.sliced_loss(model.decoder, model.drop(hidden), y, loss_fn, steps)
    else:
        loss = loss_fn(model.decode(hidden), y)
    return loss * (length / schedule.mean_length), length


def next_segment(model: RNNModel, split: Split, walker: Walker, schedule: Schedule,
                 loss_fn: LossFn, device, generator: Optional[torch.Generator] = None,
                 fused: bool = True) -> Tuple[Tensor, int]:
    """Draw the next segment's length (global CPU RNG unless ``generator``), then forward it
    (``fused`` as in ``run_segment``)."""
    length = draw_length(schedule, split.length - walker.pos, generator)
    return segment_forward(model, split, walker, schedule, length, loss_fn, device, fused)


# ----------------------------------------------------------------------------- variance

def _eval_kernels(model: RNNModel):
    """cuDNN refuses an RNN backward in eval mode: native kernels there."""
    if next(model.parameters()).is_cuda and not model.training:
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def window_gradient(model: RNNModel, inputs: Tensor, targets: Tensor, state: State,
                    loss_fn: LossFn, schedule: Optional[Schedule], start: int) -> Tensor:
    """Flat float64 parameter gradient of the summed last-step losses of windows
    ``inputs [W, S, ...]`` (from their detached ``state``) when the last cut is at step
    ``start``: steps before it run without gradient, the rest as one ARTBP segment
    (``schedule=None``, ``start=0``: the full-window BPTT gradient). ``loss_fn`` returns one
    loss per window."""
    params = [p for p in model.parameters() if p.requires_grad]
    with _eval_kernels(model):
        with torch.no_grad():
            if start > 0:
                state = model.recur(inputs[:start], state)[1]
        with torch.enable_grad():
            hidden, _ = run_segment(model, model.embed(inputs[start:]), detach_state(state),
                                    schedule)
            loss = loss_fn(model.decode(hidden[-1]), targets[-1]).sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params)]).double()


def relative_variance(model: RNNModel, inputs: Tensor, targets: Tensor, state: State,
                      loss_fn: LossFn, schedule: Schedule, draws: int,
                      generator: torch.Generator) -> float:
    """``mean_r ||g_r - g_W||^2 / ||g_W||^2`` over ``draws`` truncation draws on the windows
    (one draw shared by all windows, as by the streams in training): g_r is ARTBP's gradient of
    the last-step losses, g_W the full-window gradient, its expectation (the window start counts
    as a cut). Last cuts are drawn from ``last_cut_distribution`` with ``generator``; a sample
    estimate, which can miss rare long segments. Zero ``g_W``: 0 if every g_r is zero, else inf."""
    probs = torch.from_numpy(last_cut_distribution(schedule, inputs.shape[0]))
    starts = torch.multinomial(probs, draws, replacement=True, generator=generator).tolist()
    full = window_gradient(model, inputs, targets, state, loss_fn, None, 0)
    grads: Dict[int, Tensor] = {a: window_gradient(model, inputs, targets, state, loss_fn,
                                                   schedule, a) for a in sorted(set(starts))}
    spread = sum(float((grads[a] - full).pow(2).sum()) for a in starts) / draws
    norm = float(full.pow(2).sum())
    if norm == 0:
        return 0.0 if spread == 0 else math.inf
    return spread / norm
