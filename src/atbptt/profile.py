"""The gradient-norm profile (NOTES §3 steps 1–2) and the bias audit, by autograd.

Tensors in, tensors and numbers out; nothing here trains or keeps state. How the model is
stepped (``RecurDecode``, state trees, kernels) is ``atbptt.adapters``; the numpy maths on the
profile (β̂, the bound, δ̂, K̂) is ``atbptt.bound``.

Lag convention for a window of W steps starting from a burn-in state ``s_0``::

    s_0 --x_1--> s_1 --x_2--> ... --x_W--> s_W --decoder--> loss at the last step
                 lag W-1                   lag 0

Lag k is the state ``s_{W-k}``. TBPTT(K) keeps lags 0..K-1, i.e. it cuts the graph at
``s_{W-K}`` (lag K); the bias of TBPTT(K) is the dropped sum over lags k >= K (Theorem 1).

That holds when the last output is computed from the state the last step returns (this
project's ``RNNModel``; ``Lag0.state_after_step``). A module whose readout reads the
recurrent layer's *output sequence* instead (pytorch/examples' word language model:
``nn.LSTM``'s output tensor is not its ``h_n`` node) leaves ``s_W`` out of the loss's graph;
the profile sees that (no gradient reaches ``s_W``) and takes lag k to be the state
*entering* the k-th step before the last, ``s_{W-1-k}``: the authors' convention
(``Lag0.state_entering_step``, NOTES §3). Lag 0 is then ``s_{W-1}``, and TBPTT(K), whose K
steps with gradient include the last one, keeps lags 0..K-2: there δ̂(K) bounds the bias of
TBPTT(K+1), one lag more than the paper's formulas (the authors' K̂ has the same offset).

``loss_fn(out_last, target_last)`` returns one loss per window, ``[S]``
(``reduction='none'``), or a scalar: their mean or sum (``reduction='mean'``/``'sum'``,
e.g. ``nn.CrossEntropyLoss()``). The profile backpropagates the sum of the per-window
losses, or the scalar as it is: windows are independent, so the gradient with respect to
window s's state is window s's own gradient times the loss's weight of window s (1 for a
sum, 1/S for a mean). A mean therefore scales φ and G by the constant 1/S; β̂ (a log-slope),
δ̂(K) (a ratio of E(K) and ℓ, both linear in φ and G) and K̂(δ) do not change. A scalar loss
must weigh every window alike (no normalisation that depends on the values).

State tensors (``h``, or ``(h, c)`` for an LSTM) have the window dimension at dim 1,
``[num_layers, S, H]``, as in ``atbptt.models``. Any module ``forward(x, state) -> (out,
state)`` works; one that also follows the ``RecurDecode`` protocol (``atbptt.adapters``) gets
the fast path (the W−1 earlier steps are not decoded; ``scripts/bench_profile.py`` measures
the saving).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Tuple

import torch
from torch import Tensor, nn

from .adapters import (advance, check_layout, cuda_eval_guard, decode_last_step, profile_backend,
                       start_state, state_tensors)
from .config import Lag0

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Profile:
    """What ``grad_norm_profile`` returns; unpacks as ``phi, cum``.

    ``phi`` ``[W, S]`` and ``cum`` ``[W]`` (float64, CPU); ``lag0``: which state is lag 0;
    ``scalar_loss``: ``loss_fn`` returned a scalar (a mean scales ``phi`` and ``cum`` by 1/S)."""

    phi: Tensor
    cum: Tensor
    lag0: Lag0
    scalar_loss: bool

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.phi, self.cum))


# ------------------------------------------------------------------ losses and gradients

def _summed_loss(loss_fn: LossFn, out: Tensor, target: Tensor) -> Tensor:
    return backprop_loss(loss_fn, out, target)[0]


def backprop_loss(loss_fn: LossFn, out: Tensor, target: Tensor) -> Tuple[Tensor, bool]:
    """The loss to backpropagate: the sum of per-window losses ``[S]``, or ``loss_fn``'s
    scalar (a mean or sum over the windows) as it is; and whether it was a scalar."""
    losses = loss_fn(out, target)
    if losses.dim() == 0:
        return losses, True
    if losses.shape != (out.shape[0],):
        raise ValueError(f"loss_fn must return one loss per window, shape [{out.shape[0]}] "
                         f"(reduction='none'), or a scalar (reduction='mean' or 'sum'); got "
                         f"shape {list(losses.shape)}")
    return losses.sum(), False


def _state_gradients(loss: Tensor, states: list) -> list:
    """∂loss/∂(every tensor of every state), grouped per state (None where unused)."""
    nodes = [s for st in states for s in state_tensors(st)]
    if not all(n.requires_grad for n in nodes):
        raise ValueError("a state returned by forward does not require grad: forward must not "
                         "detach the state it returns")
    grads = iter(torch.autograd.grad(loss, nodes, allow_unused=True))
    return [[next(grads) for _ in state_tensors(st)] for st in states]


def _lag0(grads: list) -> Lag0:
    """``state_after_step`` if a non-zero gradient reaches the last state ``s_W`` (or only
    zeros reach any state); ``state_entering_step`` if the loss reads out past ``s_W``."""
    def defined(gs):
        return any(g is not None for g in gs)

    def live(gs):
        return any(g is not None and bool(g.any()) for g in gs)

    last, earlier = grads[-1], grads[:-1]
    if live(last) or (defined(last) and not any(live(g) for g in earlier)):
        return Lag0.state_after_step
    if any(defined(g) for g in earlier):
        return Lag0.state_entering_step
    raise ValueError("the last-step loss depends on none of the window's states: forward(x, "
                     "state) must compute out from the state it is given")


def _per_window_gradients(grads: list, states: list) -> Tensor:
    """Stack the gradients of W states (oldest first) as ``[W lags, S, D]``, lag 0 first:
    each state's tensors ``[L, S, H]`` (h, and c for an LSTM) become one vector per window."""
    rows = [[torch.zeros_like(n) if g is None else g for g, n in zip(gs, state_tensors(st))]
            for gs, st in zip(grads[::-1], states[::-1])]
    # one stack per state tensor (h, c): [W, L, S, H] -> [W, S, L*H], then h and c side by side
    per_tensor = [torch.stack([row[j] for row in rows]).detach() for j in range(len(rows[0]))]
    return torch.cat([t.double().transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)
                      for t in per_tensor], 2)


# ----------------------------------------------------------------------------- profile

def grad_norm_profile(model: nn.Module, inputs: Tensor, targets: Tensor, state,
                      loss_fn: LossFn, lag0: Lag0 | str | None = None) -> Profile:
    """φ_k per window and G_k, from ONE backward pass (NOTES §3 steps 1–2).

    ``inputs``/``targets``: ``[W, S, ...]`` (time-major, W ≥ 1 lags, S windows); ``state``:
    the burn-in state of the S windows, tensors ``[L, S, H]``. ``loss_fn(out [S, O],
    targets[-1]) -> [S]`` or a scalar (mean or sum over windows; module docstring).
    Returns a ``Profile`` (unpacks as ``phi, cum``): ``phi [W, S]`` with
    ``phi[k, s] = ‖∂L_s/∂state at lag k‖`` (all layers' h and c concatenated) and ``cum [W]``
    with ``cum[k] = ‖mean_s Σ_{j≤k} ∂L_s/∂state at lag j‖``, both float64 on the CPU, in the
    loss's units (a mean-reduced loss: 1/S of the per-window values); ``lag0`` says whether
    lag 0 is the state after the last step or the one entering it: ``lag0=None`` finds out
    (``state_after_step`` when the loss reads the returned state), ``state_entering_step``
    takes the authors' convention whatever the model (lag k = ``s_{W-1-k}``; module docstring),
    ``state_after_step`` insists on ``s_W``. Raises ValueError if the loss has another shape,
    depends on no state, ``forward`` detaches its state, or ``lag0=state_after_step`` is asked
    of a model whose loss does not read the state the last step returns, and as
    ``check_layout`` (a window of 0 steps, a batch_first model)."""
    check_layout(model, inputs, targets)
    def window_loss(out: Tensor, target: Tensor) -> Tuple[Tensor, bool]:
        return backprop_loss(loss_fn, out, target)

    grad, lag0, scalar = profile_gradients(model, inputs, targets, state, window_loss, lag0)
    return profile_of(grad, lag0, scalar)


def profile_gradients(model: nn.Module, inputs: Tensor, targets: Tensor, state,
                      window_loss: Callable[[Tensor, Tensor], Tuple[Tensor, bool]],
                      lag0: Lag0 | str | None = None) -> Tuple[Tensor, Lag0, bool]:
    """The state gradients behind a profile, from ONE backward pass (``grad_norm_profile``).

    ``window_loss(out [S, O], targets[-1]) -> (loss to backpropagate, whether loss_fn returned
    a scalar)``. Returns ``grad`` ``[W lags, S, D]`` (float64, lag 0 first; D = every layer's
    h, and c, concatenated), the lag convention and the scalar flag. Raises as
    ``grad_norm_profile``."""
    W = inputs.shape[0]
    with profile_backend(model, inputs), torch.enable_grad():
        # a leaf that requires grad keeps every later state in the graph even if no
        # parameter does
        state = start_state(model, state, requires_grad=True)
        states = [state]  # s_0: lag W-1 when lag 0 is s_{W-1}, else unused
        for t in range(W - 1):
            state = advance(model, inputs[t:t + 1], state)
            states.append(state)
        out, state = decode_last_step(model, inputs[W - 1:], state)
        states.append(state)
        loss, scalar = window_loss(out, targets[-1])
        grads = _state_gradients(loss, states)  # s_0 .. s_W
    found = _lag0(grads)
    lag0 = found if lag0 is None else Lag0(lag0)
    if lag0 == Lag0.state_after_step and found != lag0:
        raise ValueError("lag0=state_after_step: the last-step loss does not read the state the "
                         "last step returns (its readout reads the output sequence); use "
                         "lag0=state_entering_step or None")
    pick = slice(1, W + 1) if lag0 == Lag0.state_after_step else slice(0, W)
    return _per_window_gradients(grads[pick], states[pick]), lag0, scalar  # (W lags, S, D)


def profile_of(grad: Tensor, lag0: Lag0, scalar: bool) -> Profile:
    """φ ``[W, S]`` and G ``[W]`` of the state gradients ``grad`` ``[W lags, S, D]``."""
    phi = grad.norm(dim=2)
    cum = grad.mean(dim=1).cumsum(dim=0).norm(dim=1)  # G_k
    return Profile(phi.cpu(), cum.cpu(), lag0, scalar)


# ----------------------------------------------------------------------------- bias audit

def _truncated_param_grad(model: nn.Module, inputs: Tensor, targets: Tensor, state,
                          loss_fn: LossFn, K: int) -> Tensor:
    """Flat parameter gradient of the summed last-step losses under TBPTT(K): the state
    is cut at lag K, so only the last K steps carry gradient (K = W: the full window)."""
    W = inputs.shape[0]
    params = [p for p in model.parameters() if p.requires_grad]
    state = start_state(model, state, requires_grad=False)
    with cuda_eval_guard(model, inputs):
        with torch.no_grad():
            state = advance(model, inputs[:W - K], state)  # lags >= K: no gradient
        with torch.enable_grad():
            state = advance(model, inputs[W - K:W - 1], state)
            out, _ = decode_last_step(model, inputs[W - 1:], state)
            loss = _summed_loss(loss_fn, out, targets[-1])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params)]).double()


def true_relative_bias(model: nn.Module, inputs: Tensor, targets: Tensor, state,
                       loss_fn: LossFn, K: int) -> float:
    """‖g_K − g_W‖ / ‖g_W‖ on the given windows: the actual relative bias of TBPTT(K)
    against the full window, which δ̂(K) is meant to bound (Theorem 1)."""
    W = inputs.shape[0]
    if not 1 <= K <= W:
        raise ValueError(f"K={K} must be in [1, {W}] for a window of {W} steps")
    g_full = _truncated_param_grad(model, inputs, targets, state, loss_fn, W)
    g_K = _truncated_param_grad(model, inputs, targets, state, loss_fn, K)
    norm = g_full.norm()
    if norm == 0:
        return 0.0 if torch.equal(g_K, g_full) else math.inf
    return float((g_K - g_full).norm() / norm)
