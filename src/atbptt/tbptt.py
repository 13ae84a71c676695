"""Truncated backpropagation through time over a training split, in two styles.

Positions are time indices into the split; ``state at p`` is the state before ``x[p]``.

'chunk' (pytorch/examples): chunk i holds steps [iK, iK+K); the forward starts from the
detached state at iK, so the loss at position j of the chunk backpropagates j+1 lags::

    x:      ... | x[iK] x[iK+1] ... x[iK+K-1] | ...
    lags:         1     2           K

'overlap' (the paper's runs): the forward starts from the detached state at iK-(K-1) and
runs 2K-1 steps; the loss is taken on the K new steps only, so every term gets >= K lags::

    x:      x[iK-K+1] ... x[iK-1] | x[iK] ... x[iK+K-1]
            burn-in (recur only)  | new steps (decoded, in the loss)
    lags:                           K     ...  2K-1

The burn-in steps only need the recurrence ('lean'); ``decode_burn_in=True`` is the
straightforward version (the authors'): decode all 2K-1 outputs in one call and slice the K
new ones for the loss, so the decoder's forward and backward run over every step (kept for
benchmarks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .config import Style
from .data import Split
from .models import RNNModel, State, detach_state

LossFn = Callable[[Tensor, Tensor], Tensor]


def sequence_loss(classification: bool) -> LossFn:
    """Mean loss over every time step, stream (and output dimension)."""
    if classification:
        return lambda out, y: cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return lambda out, y: torch.nn.functional.mse_loss(out, y)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits [N, C]`` against class ids ``target [N]``.

    ``F.cross_entropy`` (mean reduction) up to float rounding; with a gradient it uses a fused
    backward, ``(softmax - onehot) / N`` written into the saved log-softmax in place. That
    skips ``nll_loss``'s zero-filled ``[N, C]`` gradient buffer and one pass of
    ``log_softmax``'s backward: with a 10k vocabulary the loss's backward takes about a third
    less time, a few percent of a lean overlap step (``make bench``)."""
    target = target.long()
    if torch.is_grad_enabled() and logits.requires_grad:
        return _CrossEntropy.apply(logits, target)
    return torch.nn.functional.cross_entropy(logits, target)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor) -> Tensor:
        log_probs = torch.log_softmax(logits, dim=1)
        ctx.save_for_backward(log_probs, target)
        return -log_probs.gather(1, target[:, None]).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        # unpacking checks the saved tensor's version: a second backward through a retained
        # graph raises instead of reading the probabilities written below
        log_probs, target = ctx.saved_tensors
        scale = (grad / log_probs.shape[0]).to(log_probs.dtype)
        out = log_probs.exp_().mul_(scale)
        out.scatter_add_(1, target[:, None], (-scale).expand(target.shape[0], 1))
        return out, None


def last_step_loss(classification: bool) -> LossFn:
    """Per-stream loss of one time step (``out [S, O]``, ``y [S, ...]`` -> ``[S]``)."""
    if classification:
        return lambda out, y: torch.nn.functional.cross_entropy(out, y, reduction="none")
    return lambda out, y: ((out - y) ** 2).mean(dim=-1)


@dataclass
class Walker:
    """Position in the training split and the detached state carried between chunks.

    ``anchor`` is the position of ``state`` (<= ``pos``); in 'chunk' style it equals ``pos``.
    """

    pos: int
    anchor: int
    state: State

    @staticmethod
    def start(model: RNNModel, num_streams: int, device) -> "Walker":
        return Walker(0, 0, model.init_state(num_streams, device))


def chunk_forward(model: RNNModel, split: Split, walker: Walker, K: int, style: Style,
                  loss_fn: LossFn, device, decode_burn_in: bool = False) -> Tuple[Tensor, int]:
    """Forward one training chunk of (up to) K new steps; returns the loss (with graph) and the
    number of new steps. Advances ``walker`` to the next chunk, state detached."""
    K = min(K, split.length - walker.pos)
    pos = walker.pos
    y = split.targets[pos:pos + K].to(device, non_blocking=True)
    if style == Style.chunk:
        out, state = model(split.inputs[pos:pos + K].to(device, non_blocking=True), walker.state)
        walker.pos = walker.anchor = pos + K
        walker.state = detach_state(state)
        return loss_fn(out, y), K
    start = _advance_anchor(model, split, walker, max(0, pos - (K - 1)), device)
    x = split.inputs[start:pos + K].to(device, non_blocking=True)  # (pos - start + K, B, ...)
    burn = pos - start
    state = walker.state
    emb = model.embed(x)
    pieces = []
    if burn > 0:
        hidden, state = model.core(emb[:burn], state)
        if decode_burn_in:
            pieces.append(hidden)
    # the first new step ends where the next chunk's burn-in starts (if K stays the same)
    hidden, state = model.core(emb[burn:burn + 1], state)
    pieces.append(hidden)
    walker.anchor, walker.state = pos + 1, detach_state(state)
    if K > 1:
        hidden, state = model.core(emb[burn + 1:], state)
        pieces.append(hidden)
    out = model.decode(torch.cat(pieces) if len(pieces) > 1 else pieces[0])
    if decode_burn_in and burn > 0:
        out = out[burn:]  # decoded (forward and backward) over all 2K-1 steps, then sliced
    walker.pos = pos + K
    return loss_fn(out, y), K


def _advance_anchor(model: RNNModel, split: Split, walker: Walker, start: int, device) -> int:
    """Move the carried state forward to ``start`` without gradient (when K shrank); if K grew
    past the carried state, the burn-in starts at the anchor instead (shorter, once)."""
    if walker.anchor < start:
        with torch.no_grad():
            x = split.inputs[walker.anchor:start].to(device, non_blocking=True)
            _, state = model.recur(x, walker.state)
        walker.anchor, walker.state = start, detach_state(state)
    return max(start, walker.anchor)


@torch.no_grad()
def evaluate(model: RNNModel, split: Split, chunk: int, loss_fn: LossFn, device) -> float:
    """Mean loss over the whole split, streams with carried state, in chunks (no gradient)."""
    was_training = model.training
    model.eval()
    state: Optional[State] = model.init_state(split.num_streams, device)
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for pos in range(0, split.length, chunk):
        x = split.inputs[pos:pos + chunk].to(device, non_blocking=True)
        y = split.targets[pos:pos + chunk].to(device, non_blocking=True)
        out, state = model(x, state)
        steps = x.shape[0]
        total += loss_fn(out, y).double() * steps
        count += steps
    model.train(was_training)
    return float(total) / count
