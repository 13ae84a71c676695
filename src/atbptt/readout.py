"""The decoder and loss of a long segment, in slices of bounded size (ARTBP's long segments).

ARTBP's segment lengths are random (geometric with mean K for the constant schedule), so
some segments are several times K long, and the logits of a segment of L steps take
``L × B × V`` floats (L = 300, B = 32, V = 10k: 384 MB, and as much again for the
log-probabilities). On the CPU a step over such tensors costs more per token than over K = 35
chunks (every fresh allocation of that size is page-faulted in and the working set leaves the
caches): a fixed-K chunk of 300 steps trains at about 0.6–0.7× the tokens/s of chunks of 35
(``make bench`` machine). ``sliced_loss`` computes the same loss — ``loss_fn``'s mean over all
L steps, as ``loss_fn(decoder(hidden), y)`` — slice by slice: each slice's logits, loss and
gradients (with respect to its hidden states and the decoder's parameters) are computed
during the forward pass and its logits freed at once; the backward pass only scales the
stored gradients. Values and gradients equal the one-shot computation up to float rounding
(the decoder's gradient is summed slice by slice); peak memory is one slice's logits instead
of the segment's.

``loss_fn`` must be a mean over time steps of equal weight (``tbptt.sequence_loss``: mean
cross-entropy or mean squared error): a slice of n of the L steps then weighs n/L.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

SLICE_ELEMENTS = 2 ** 22  # at most this many logits per slice (16 MiB of float32)


def slice_steps(batch: int, outputs: int) -> int:
    """Steps per slice: as many as keep a slice's ``steps × batch × outputs`` logits within
    ``SLICE_ELEMENTS``, at least one."""
    return max(1, SLICE_ELEMENTS // max(1, batch * outputs))


def sliced_loss(decoder: nn.Linear, hidden: Tensor, targets: Tensor,
                loss_fn: Callable[[Tensor, Tensor], Tensor], steps: int) -> Tensor:
    """``loss_fn(decoder(hidden), targets)`` computed ``steps`` time steps at a time.

    ``hidden`` ``[L, B, H]`` (dropout already applied), ``targets`` ``[L, B, ...]``,
    ``decoder`` an ``nn.Linear`` (its weight may be tied to an embedding). Returns the scalar
    loss with a gradient to ``hidden`` and to the decoder's weight and bias. Raises
    ValueError if ``steps`` < 1."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    params = [decoder.weight] + ([decoder.bias] if decoder.bias is not None else [])
    return _Sliced.apply(decoder, loss_fn, steps, hidden, targets, *params)


class _Sliced(torch.autograd.Function):
    @staticmethod
    def forward(ctx, decoder, loss_fn, steps, hidden, targets, *params):
        L = hidden.shape[0]
        d_hidden = torch.empty_like(hidden)
        d_params: List[Tensor] = [torch.zeros_like(p) for p in params]
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        with torch.enable_grad():
            for start in range(0, L, steps):
                stop = min(start + steps, L)
                leaf = hidden[start:stop].detach().requires_grad_()
                part = loss_fn(decoder(leaf), targets[start:stop]) * ((stop - start) / L)
                grads = torch.autograd.grad(part, [leaf, *params])
                d_hidden[start:stop] = grads[0]
                for acc, g in zip(d_params, grads[1:]):
                    acc.add_(g)
                total += part.detach().double()
        ctx.save_for_backward(d_hidden, *d_params)
        return total.to(hidden.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> Tuple:
        d_hidden, *d_params = ctx.saved_tensors
        return (None, None, None, d_hidden * grad, None, *(g * grad for g in d_params))
