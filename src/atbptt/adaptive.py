"""The adaptive-TBPTT estimator (NOTES §3): gradient-norm profile, β̂, bias bound, K̂(δ).

Tensors and arrays in, numbers out; nothing here trains or keeps state.

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
state)`` works; one that also follows the ``RecurDecode`` protocol gets the fast path (the
W−1 earlier steps are not decoded; ``scripts/bench_profile.py`` measures the saving).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from .config import Average, BetaMethod, GradNormBound, Lag0

DELTAS = (1.0, 0.9, 0.5, 0.1)  # K̂(δ) is computed and logged for these δ (NOTES §3)

LossFn = Callable[[Tensor, Tensor], Tensor]
LOG_FLOOR = -50.0  # log φ̂ at or below this counts as numerically zero (NOTES §3 step 3)
QUANTILE = 0.95  # 'quantile' β̂: this quantile of the pairwise tail slopes


@runtime_checkable
class RecurDecode(Protocol):
    """Optional protocol that gives any module the profile's fast path (no decoding of the
    W−1 earlier steps of a window), next to its ``forward(x, state) -> (out, state)``:

    - ``recur(x, state) -> (hidden, state)``: the recurrent part only, ``x`` ``[T, B, ...]``,
      ``hidden`` ``[T, B, H]`` (what the readout reads), ``state`` as ``forward``'s;
    - ``decode(hidden) -> out``: the readout, ``[T, B, H]`` -> ``[T, B, O]``;
    - optionally ``state_output(state) -> [1, B, H]``: what ``decode`` reads after the last
      step, computed from the returned state (for ``nn.LSTM``, the top layer of ``h_n``:
      ``state[0][-1:]``). With it lag 0 is ``s_W`` (``Lag0.state_after_step``); without it
      the last step is decoded from ``recur``'s ``hidden`` and lag 0 is ``s_{W-1}``.

    ``decode(recur(x, s)[0])`` must equal ``forward(x, s)[0]``. This project's ``RNNModel``
    follows it."""

    def recur(self, x: Tensor, state: Any) -> Tuple[Tensor, Any]: ...

    def decode(self, hidden: Tensor) -> Tensor: ...


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


# ----------------------------------------------------------------------------- model stepping

def _is_rnn_model(model: nn.Module) -> bool:
    """A module with the fast path: separate recurrent core and readout (``RecurDecode``)."""
    return isinstance(model, RecurDecode)


def _tensors(state) -> Tuple[Tensor, ...]:
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


def _like(state, fn):
    """Apply ``fn`` to every tensor of a state, keeping its structure."""
    return tuple(fn(s) for s in state) if isinstance(state, (tuple, list)) else fn(state)


def _advance(model: nn.Module, x: Tensor, state):
    """Run the steps ``x`` ``[T, S, ...]`` without decoding; returns the new state."""
    if x.shape[0] == 0:
        return state
    if _is_rnn_model(model):
        return model.recur(x, state)[1]
    return model(x, state)[1]


def _readout(model: nn.Module, x_last: Tensor, state):
    """Run the last step ``x_last`` ``[1, S, ...]`` and decode it: returns (out [S, O], state).

    A ``RecurDecode`` module with ``state_output`` decodes from it, so that the loss is a
    function of the returned state node (lag 0 = ``s_W``); otherwise the output is whatever
    the module reads out, and ``grad_norm_profile`` finds out which state it depends on."""
    S = x_last.shape[1]
    if _is_rnn_model(model):
        hidden, state = model.recur(x_last, state)
        if hasattr(model, "state_output"):
            hidden = model.state_output(state)
        return _last_step_output(model.decode(hidden), S), state
    out, state = model(x_last, state)
    return _last_step_output(out, S), state


def _last_step_output(out: Tensor, S: int) -> Tensor:
    """``[S, ...]`` from the output of one step: ``[1, S, ...]`` (time-major) or ``[S, ...]``
    (flattened ``[T*S, O]`` with T = 1, as pytorch/examples' model returns its log-softmax)."""
    if out.dim() >= 2 and out.shape[0] == 1 and out.shape[1] == S:
        return out[0]
    if out.dim() >= 1 and out.shape[0] == S:
        return out
    raise ValueError(f"one step of forward returned out of shape {list(out.shape)}; expected "
                     f"[1, {S}, ...] (time-major) or [{S}, ...] for {S} windows")


def _start_state(model: nn.Module, state, requires_grad: bool):
    """A detached copy of ``state`` in the model's floating dtype (a float32 ``init_state``
    fed to a float64 model is cast), optionally a leaf that requires grad."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else None
    return _like(state, lambda s: s.detach().to(dtype=dtype or s.dtype)
                 .requires_grad_(requires_grad))


def _device_of(model: nn.Module, fallback: Tensor) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else fallback.device


@contextlib.contextmanager
def native_cpu_kernels():
    """PyTorch's native CPU RNN kernels instead of oneDNN's, whose backward always computes
    the weight gradients (the profile needs only state gradients)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _cuda_eval_guard(model: nn.Module, fallback: Tensor):
    """cuDNN's RNN backward refuses eval mode: use the native kernels there."""
    if _device_of(model, fallback).type == "cuda" and not model.training:
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def _profile_backend(model: nn.Module, fallback: Tensor):
    """Kernels for a state-only backward pass.

    CUDA: cuDNN's RNN backward refuses eval mode, so use the native kernels there. CPU: the
    oneDNN LSTM backward always computes the weight gradients too; the native kernels let
    autograd skip them, which halves the profile's time (scripts/bench_profile.py)."""
    if _device_of(model, fallback).type == "cuda":
        return _cuda_eval_guard(model, fallback)
    return native_cpu_kernels()


def _summed_loss(loss_fn: LossFn, out: Tensor, target: Tensor) -> Tensor:
    return _window_loss(loss_fn, out, target)[0]


def _window_loss(loss_fn: LossFn, out: Tensor, target: Tensor) -> Tuple[Tensor, bool]:
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
    nodes = [s for st in states for s in _tensors(st)]
    if not all(n.requires_grad for n in nodes):
        raise ValueError("a state returned by forward does not require grad: forward must not "
                         "detach the state it returns")
    grads = iter(torch.autograd.grad(loss, nodes, allow_unused=True))
    return [[next(grads) for _ in _tensors(st)] for st in states]


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
    rows = [[torch.zeros_like(n) if g is None else g for g, n in zip(gs, _tensors(st))]
            for gs, st in zip(grads[::-1], states[::-1])]
    # one stack per state tensor (h, c): [W, L, S, H] -> [W, S, L*H], then h and c side by side
    per_tensor = [torch.stack([row[j] for row in rows]).detach() for j in range(len(rows[0]))]
    return torch.cat([t.double().transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)
                      for t in per_tensor], 2)


def check_layout(model: nn.Module, inputs: Tensor, targets: Tensor) -> None:
    """Raise ValueError unless ``inputs`` and ``targets`` are time-major tensors ``[T, B, ...]``
    of one T >= 1 and one B, and no layer of ``model`` expects ``batch_first`` input."""
    for name, value in (("inputs", inputs), ("targets", targets)):
        if not isinstance(value, Tensor) or value.dim() < 2:
            shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a time-major tensor [T, B, ...] (T steps of B "
                             f"streams); got {shape}")
    if inputs.shape[:2] != targets.shape[:2] or inputs.shape[0] < 1:
        raise ValueError(f"inputs {list(inputs.shape)} and targets {list(targets.shape)} must "
                         "share their first two dimensions [T, B] (time-major), with T >= 1")
    layers = [name or type(m).__name__ for name, m in model.named_modules()
              if getattr(m, "batch_first", False) is True]
    if layers:
        raise ValueError(f"the model's layer '{layers[0]}' has batch_first=True, and the "
                         "estimator feeds time-major input [T, B, ...]: build it with "
                         "batch_first=False")


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
    grad, lag0, scalar = profile_gradients(model, inputs, targets, state,
                                           lambda out, target: _window_loss(loss_fn, out, target),
                                           lag0)
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
    with _profile_backend(model, inputs), torch.enable_grad():
        # a leaf that requires grad keeps every later state in the graph even if no
        # parameter does
        state = _start_state(model, state, requires_grad=True)
        states = [state]  # s_0: lag W-1 when lag 0 is s_{W-1}, else unused
        for t in range(W - 1):
            state = _advance(model, inputs[t:t + 1], state)
            states.append(state)
        out, state = _readout(model, inputs[W - 1:], state)
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


# ----------------------------------------------------------------------------- β̂ and the bound

def _check_finite(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or inf: the gradient-norm profile is unusable")


def _default_tau(W: int, tau: Optional[int], burn_in: Optional[int]) -> int:
    """τ = W − b (NOTES §3 step 3), b = burn_in or W // 10 (the LM code's b); clamped."""
    if tau is not None:
        if not 0 <= tau < W:
            raise ValueError(f"tau={tau} must be in [0, {W - 1}] for a window of {W} lags")
        return int(tau)
    b = burn_in if burn_in is not None else W // 10
    return int(min(max(W - b, 0), W - 1))


def _ols_beta(log_phi: np.ndarray, valid: np.ndarray) -> float:
    """exp(least-squares slope of log φ̂_k on k) over the numerically non-zero lags."""
    k = np.flatnonzero(valid)
    if k.size < 2:
        return 0.0  # at most one non-zero lag: the profile vanishes at once
    slope = np.polyfit(k.astype(float), log_phi[k], 1)[0]
    return float(math.exp(slope))


def _tail_beta(log_phi: np.ndarray, valid: np.ndarray, method: BetaMethod, tau: int) -> float:
    """'max' and 'quantile' β̂ from the tail lags k ≥ τ, where (A-1) is assumed to hold.

    'max': max over k in (τ, W) of (log φ̂_k − log φ̂_τ)/(k − τ).
    'quantile': the 0.95 quantile of (log φ̂_j − log φ̂_i)/(j − i) over all pairs
    τ ≤ i < j < W of non-zero lags. A tail that has vanished gives β̂ = 0; a tail of one
    lag (τ = W − 1) has no slope and falls back to 'ols'."""
    W = log_phi.size
    if tau >= W - 1:
        return _ols_beta(log_phi, valid)
    if not valid[tau]:
        return 0.0
    if method == BetaMethod.max:
        k = np.arange(tau + 1, W)
        with np.errstate(invalid="ignore"):
            slopes = (log_phi[k] - log_phi[tau]) / (k - tau)  # -inf where φ̂_k = 0
        return float(math.exp(np.max(slopes)))
    k = np.flatnonzero(valid[tau:]) + tau
    if k.size < 2:
        return 0.0
    i, j = np.triu_indices(k.size, 1)
    slopes = (log_phi[k[j]] - log_phi[k[i]]) / (k[j] - k[i])
    return float(math.exp(np.quantile(slopes, QUANTILE)))


def fit_beta(phi_mean: np.ndarray, beta_method: BetaMethod | str = BetaMethod.ols,
             tau: int = 0) -> float:
    """β̂ from the window-averaged profile φ̂ (NOTES §3 step 3)."""
    method = BetaMethod(beta_method)
    with np.errstate(divide="ignore"):
        log_phi = np.log(phi_mean)
    valid = log_phi > LOG_FLOOR
    if method == BetaMethod.ols:
        return _ols_beta(log_phi, valid)
    return _tail_beta(log_phi, valid, method, tau)


def bias_bound(phi_mean: np.ndarray, beta_hat: float, tau: int) -> np.ndarray:
    """E(K) in units of M for K = 0..W (Theorem 1; NOTES §3 step 4), length W + 1.

    K ≥ τ: φ̂_τ β̂^{K−τ}/(1−β̂). K < τ: Σ_{k=K}^{τ} φ̂_k + φ̂_τ/(1−β̂) (conservative: φ̂_τ
    counted twice). β̂ ≥ 1: infinite, unless every φ̂ is numerically zero, in which case the
    in-window sum Σ_{k≥K} φ̂_k is used (no extrapolation)."""
    W = phi_mean.size
    if beta_hat >= 1:
        if np.all(phi_mean <= math.exp(LOG_FLOOR)):
            return np.append(np.cumsum(phi_mean[::-1])[::-1], 0.0)
        return np.full(W + 1, np.inf)
    K = np.arange(W + 1)
    tail = phi_mean[tau] / (1 - beta_hat)
    geometric = tail * np.power(beta_hat, np.maximum(K - tau, 0).astype(float))
    head = np.cumsum(phi_mean[:tau + 1][::-1])[::-1]  # Σ_{k=K}^{τ} φ̂_k for K = 0..τ
    head = np.append(head, np.zeros(W + 1 - head.size))
    return np.where(K >= tau, geometric, head + tail)


def _relative_from_bound(E: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """δ̂(K) = E(K)/ℓ for K = 1..W with ℓ = max_k (G_k − E(k)) > 0 (Theorem 1; §3 step 5).

    Infinite where E(K) is, or where no k gives a positive ℓ; zero where E(K) = 0."""
    W = cum.size
    with np.errstate(invalid="ignore"):
        gap = cum - E[:W]
    positive = gap[np.isfinite(gap) & (gap > 0)]
    ell = positive.max() if positive.size else 0.0
    bound = E[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(bound == 0, 0.0, bound / ell if ell > 0 else np.inf)
    return np.where(np.isfinite(bound), rel, np.inf)


def norm_sum(phi_mean: np.ndarray) -> np.ndarray:
    """The cruder stand-in for ‖E ĝ_K‖/M: G_k = Σ_{j≤k} φ̂_j, the cumulative sum of the mean
    norms (NOTES §3 step 2; the paper's PTB and WikiText-2 runs). Since Σ‖·‖ ≥ ‖Σ·‖ it is
    at least the ``grad`` stand-in, so its ℓ is larger and its δ̂(K) smaller."""
    return np.cumsum(np.asarray(phi_mean, dtype=float))


def lower_bound_curve(phi_mean: np.ndarray, cum: np.ndarray,
                      grad_norm_bound: GradNormBound | str = GradNormBound.grad) -> np.ndarray:
    """G_k ``[W]`` under the chosen stand-in: ``grad`` is ``cum`` as the profile measured it
    (norm of the averaged cumulative state gradient), ``norm_sum`` is ``norm_sum(phi_mean)``."""
    if GradNormBound(grad_norm_bound) == GradNormBound.norm_sum:
        return norm_sum(phi_mean)
    return np.asarray(cum, dtype=float)


def relative_bias(phi, cum, beta_method: BetaMethod | str = BetaMethod.ols,
                  tau: Optional[int] = None, burn_in: Optional[int] = None,
                  grad_norm_bound: GradNormBound | str = GradNormBound.grad
                  ) -> Tuple[float, np.ndarray]:
    """β̂ and δ̂(K) for K = 1..W (NOTES §3 steps 2–5); ``rel_bias[K-1] = δ̂(K)``.

    ``phi``: ``[W, S]`` per-window norms or the window mean ``[W]``; ``cum``: G ``[W]`` as
    ``grad_norm_profile`` returns it. τ: ``tau`` if given, else W − ``burn_in`` (W − W//10
    without either), in [0, W−1]. ``grad_norm_bound`` picks the stand-in for ‖E ĝ_K‖ in ℓ:
    ``grad`` (``cum``, the theory's) or ``norm_sum`` (Σ_{j≤k} φ̂_j, the paper's LM runs).
    Raises ValueError on NaN/inf or mismatched shapes."""
    phi = np.asarray(phi, dtype=float)
    cum = np.asarray(cum, dtype=float)
    _check_finite("phi", phi)
    _check_finite("cum", cum)
    phi_mean = phi.mean(axis=1) if phi.ndim == 2 else phi  # φ̂_k, §3 step 2
    if phi_mean.ndim != 1 or cum.shape != phi_mean.shape or phi_mean.size == 0:
        raise ValueError(f"phi [W] or [W, S] and cum [W] must agree; got {phi.shape}, {cum.shape}")
    tau = _default_tau(phi_mean.size, tau, burn_in)
    beta_hat = fit_beta(phi_mean, beta_method, tau)
    curve = lower_bound_curve(phi_mean, cum, grad_norm_bound)
    return beta_hat, _relative_from_bound(bias_bound(phi_mean, beta_hat, tau), curve)


def geometric_tail(phi_mean, beta_hat: float, tau: int) -> np.ndarray:
    """The fitted tail φ̂_τ β̂^{k−τ} at every lag k = 0..W−1 (for decay plots).

    NaN before τ when β̂ = 0 (the fit says nothing there)."""
    phi_mean = np.asarray(phi_mean, dtype=float)
    k = np.arange(phi_mean.size, dtype=float)
    if beta_hat <= 0:
        return np.where(k == tau, phi_mean[tau], np.where(k > tau, 0.0, np.nan))
    # in logs: a steep fit overflows far before τ (inf is right), and a φ̂_τ that underflowed to
    # 0 (long windows) gives 0 everywhere, not 0·inf = NaN
    with np.errstate(over="ignore", divide="ignore"):
        return np.exp(np.log(phi_mean[tau]) + (k - tau) * math.log(beta_hat))


def k_hat(rel_bias, delta: float) -> int:
    """K̂(δ) unclamped: the smallest K with δ̂(K) < δ, else the window's largest K, W
    (NOTES §3 step 6). ``rel_bias[K-1] = δ̂(K)``, K = 1..W."""
    rel_bias = np.asarray(rel_bias, dtype=float)
    below = np.flatnonzero(rel_bias < delta)
    return int(below[0]) + 1 if below.size else int(rel_bias.size)


def clamp_K(K: float, k_min: int, k_max: int) -> int:
    """``int(K)`` (truncated, as the authors' ``int(mean)``) clamped to [k_min, k_max]."""
    return int(min(max(int(K), k_min), k_max))


def choose_K(rel_bias, delta: float, k_min: int, k_max: int) -> int:
    """K̂(δ) of one estimate, clamped to [k_min, k_max] (NOTES §3 step 6)."""
    return clamp_K(k_hat(rel_bias, delta), k_min, k_max)


def average_K(k_hats: Sequence[int], k_min: int, k_max: int) -> int:
    """The authors' K from several estimates (NOTES §3 step 6): the mean of the **unclamped**
    K̂ values, truncated to an integer, then clamped to [k_min, k_max]. Raises ValueError on
    an empty sequence."""
    if len(k_hats) == 0:
        raise ValueError("average_K needs at least one K̂ value")
    return clamp_K(float(np.mean(k_hats)), k_min, k_max)


# ----------------------------------------------------------------------------- full estimate

def sample_windows(inputs: Tensor, targets: Tensor, length: int, num_windows: int,
                   generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """``num_windows`` windows of ``length`` steps at random (stream, offset) of a split
    ``[T, B, ...]``; returns ``[length, S, ...]``. Draws only from ``generator`` (CPU)."""
    T, B = inputs.shape[:2]
    if length > T:
        raise ValueError(f"windows of {length} steps do not fit a split of {T} steps")
    stream = torch.randint(0, B, (num_windows,), generator=generator)
    offset = torch.randint(0, T - length + 1, (num_windows,), generator=generator)
    time_index = offset[None, :] + torch.arange(length)[:, None]  # (length, S)
    stream_index = stream[None, :].expand(length, num_windows)
    tx, sx = time_index.to(inputs.device), stream_index.to(inputs.device)
    ty, sy = time_index.to(targets.device), stream_index.to(targets.device)
    return inputs[tx, sx], targets[ty, sy]


@dataclass
class Estimate:
    """One estimate of K̂(δ) from ``num_estimates`` independent profiles (NOTES §3 step 6).

    ``phi`` ``[W]``: φ̂ over all windows of all profiles; ``cum`` ``[W]``: G (``grad``
    stand-in) averaged over profiles; ``beta_hat``: mean of the per-profile β̂ (``betas``);
    ``tail``: the geometric tail of that β̂ (for plots). How the profiles become ``rel_bias``
    (δ̂(K), K = 1..W) and ``K_hat`` (per δ) is ``average``:

    - ``Average.k_hat`` (the authors'): ``K_hat`` = ``average_K`` of the per-profile unclamped
      K̂ values (mean, truncated, clamped); ``rel_bias`` = the mean of the per-profile δ̂ curves
      (what the authors log).
    - ``Average.profiles``: ``rel_bias`` from the pooled φ̂ and G with the mean β̂, ``K_hat``
      = ``choose_K`` of it.

    With one profile both are exactly ``relative_bias`` and ``choose_K``. ``k_hats`` holds the
    per-profile unclamped K̂ and ``rel_biases`` ``[N, W]`` the per-profile δ̂ curves (chosen
    stand-in). ``by_bound`` holds ``(rel_bias, K_hat)`` under
    each stand-in, from the same profiles, so the two can be compared. ``lag0``: the
    profiles' lag convention (``Lag0``; the module docstring says what it means for K)."""

    phi: np.ndarray
    cum: np.ndarray
    beta_hat: float
    rel_bias: np.ndarray
    K_hat: Dict[float, int]
    tail: np.ndarray
    tau: int
    seconds: float
    betas: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per-profile β̂
    grad_norm_bound: GradNormBound = GradNormBound.grad
    by_bound: Dict[GradNormBound, Tuple[np.ndarray, Dict[float, int]]] = field(default_factory=dict)
    lag0: Lag0 = Lag0.state_after_step
    average: Average = Average.k_hat
    k_hats: Dict[float, list] = field(default_factory=dict)
    rel_biases: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def delta_hat(self, K: int, grad_norm_bound: GradNormBound | str | None = None) -> float:
        """δ̂(K) under ``grad_norm_bound`` (default: the estimate's own stand-in); beyond the
        window (K > W ≥ τ) the bound keeps decaying as β̂^{K−W}. Raises ValueError if K < 1."""
        rel_bias = (self.rel_bias if grad_norm_bound is None
                    else self.by_bound[GradNormBound(grad_norm_bound)][0])
        W = rel_bias.size
        if K < 1:
            raise ValueError(f"K={K} must be >= 1")
        if K <= W:
            return float(rel_bias[K - 1])
        last = float(rel_bias[-1])
        if not math.isfinite(last) or last == 0 or self.beta_hat >= 1:
            return last
        return last * self.beta_hat ** (K - W)


def initial_state(model: nn.Module, batch_size: int, device: torch.device,
                  init_state: Optional[Callable[[int], Any]] = None):
    """The zero state of ``batch_size`` windows on ``device``: ``init_state(batch_size)`` if
    given, else the model's ``init_state(batch_size, device)`` (this project's models) or
    ``init_hidden(batch_size)`` (pytorch/examples'). Raises ValueError if there is none."""
    if init_state is not None:
        state = init_state(batch_size)
    elif hasattr(model, "init_state"):
        state = model.init_state(batch_size, device)
    elif hasattr(model, "init_hidden"):
        state = model.init_hidden(batch_size)
    else:
        raise ValueError("the estimator needs the windows' zero state: pass init_state="
                         "lambda S: ..., or give the model init_state(batch_size, device) or "
                         "init_hidden(batch_size)")
    return _like(state, lambda s: s.to(device))


def _profile_once(model, inputs, targets, *, window, burn_in, num_windows, loss_fn,
                  generator, device, init_state=None, lag0=None) -> Profile:
    """Sample windows, burn in from a zero state without grad, profile the last W steps."""
    x, y = sample_windows(inputs, targets, burn_in + window, num_windows, generator)
    x, y = x.to(device), y.to(device)
    state = _start_state(model, initial_state(model, num_windows, device, init_state),
                         requires_grad=False)
    with torch.no_grad():
        state = _advance(model, x[:burn_in], state)
    return grad_norm_profile(model, x[burn_in:], y[burn_in:], state, loss_fn, lag0)


def estimate(model: nn.Module, inputs: Tensor, targets: Tensor, *, window: int, burn_in: int,
             num_windows: int, loss_fn: LossFn, generator: torch.Generator,
             num_estimates: int = 1, beta_method: BetaMethod | str = BetaMethod.ols,
             tau: Optional[int] = None, deltas: Sequence[float] = DELTAS,
             k_min: int = 1, k_max: Optional[int] = None,
             device: torch.device | str | None = None,
             grad_norm_bound: GradNormBound | str = GradNormBound.grad,
             init_state: Optional[Callable[[int], Any]] = None,
             average: Average | str = Average.k_hat, lag0: Lag0 | str | None = None,
             batch_estimates: bool = False) -> Estimate:
    """K̂(δ) and δ̂(K) from ``num_estimates`` independent profiles (Algorithm 1; NOTES §3).

    ``inputs``/``targets``: a training split ``[T, B, ...]`` (time-major streams, T ≥
    ``burn_in + window``); each profile draws ``num_windows`` windows of ``burn_in + window``
    steps from it, runs the burn-in from the zero state (``initial_state``) without gradient
    and profiles the last ``window`` steps. ``loss_fn`` as in ``grad_norm_profile`` (one loss
    per window, or their mean or sum: the same δ̂ and K̂). ``model``: any module
    ``forward(x, state) -> (out, state)`` (``RecurDecode`` for the fast path).
    ``grad_norm_bound`` picks the stand-in behind ``rel_bias`` and ``K_hat`` (``grad`` or
    ``norm_sum``, see ``relative_bias``); both are computed, in ``by_bound``. ``average``:
    how the profiles are combined (``Estimate``); ``lag0``: as in ``grad_norm_profile``.
    ``batch_estimates``: the ``num_estimates`` profiles in one pass over N×S windows, split
    back into N (``atbptt.batched``; the same windows, and in eval mode the same numbers up to
    float rounding; with dropout active other masks). Never changes the global RNG (training randomness is unaffected): windows come from
    ``generator``, and in training mode the dropout masks from a seed drawn from it. The caller
    sets the mode (the authors profile in training mode, dropout active). ``seconds`` is the
    wall clock. Raises ValueError on a bad argument or a NaN profile."""
    if num_estimates < 1 or num_windows < 1 or window < 1 or burn_in < 0:
        raise ValueError(f"need num_estimates >= 1 (got {num_estimates}), num_windows >= 1 "
                         f"(got {num_windows}), window >= 1 (got {window}), burn_in >= 0 "
                         f"(got {burn_in})")
    check_layout(model, inputs, targets)
    start = time.perf_counter()
    device = torch.device(device) if device is not None else _device_of(model, inputs)
    k_max = window if k_max is None else k_max
    tau = _default_tau(window, tau, burn_in)
    chosen, average = GradNormBound(grad_norm_bound), Average(average)
    phis, cums, betas = [], [], []
    rels = {b: [] for b in GradNormBound}
    found = Lag0.state_after_step
    sampling = dict(window=window, burn_in=burn_in, num_windows=num_windows, loss_fn=loss_fn,
                    generator=generator, device=device, init_state=init_state, lag0=lag0)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        if batch_estimates:
            from .batched import profiles_together
            profiles = profiles_together(model, inputs, targets, num_estimates, **sampling)
        else:
            profiles = [_profile_once(model, inputs, targets, **sampling)
                        for _ in range(num_estimates)]
    for profile in profiles:
        phi, cum, found = profile.phi.numpy(), profile.cum.numpy(), profile.lag0
        for bound in GradNormBound:
            beta, rel = relative_bias(phi, cum, beta_method, tau, grad_norm_bound=bound)
            rels[bound].append(rel)
        phis.append(phi.mean(axis=1))
        cums.append(cum)
        betas.append(beta)  # β̂ does not depend on the stand-in
    phi_mean, cum_mean, beta_hat = np.mean(phis, 0), np.mean(cums, 0), float(np.mean(betas))
    k_hats = {b: {d: [k_hat(r, d) for r in rels[b]] for d in deltas} for b in GradNormBound}
    if average == Average.k_hat:
        by_bound = {b: (np.mean(rels[b], axis=0),
                        {d: average_K(k, k_min, k_max) for d, k in k_hats[b].items()})
                    for b in GradNormBound}
    else:
        E = bias_bound(phi_mean, beta_hat, tau)
        pooled = {b: _relative_from_bound(E, lower_bound_curve(phi_mean, cum_mean, b))
                  for b in GradNormBound}
        by_bound = {b: (rel, {d: choose_K(rel, d, k_min, k_max) for d in deltas})
                    for b, rel in pooled.items()}
    rel_bias, K_hat = by_bound[chosen]
    return Estimate(phi=phi_mean, cum=cum_mean, beta_hat=beta_hat, rel_bias=rel_bias,
                    K_hat=K_hat, tail=geometric_tail(phi_mean, beta_hat, tau), tau=tau,
                    seconds=time.perf_counter() - start, betas=np.asarray(betas),
                    grad_norm_bound=chosen, by_bound=by_bound, lag0=found, average=average,
                    k_hats=k_hats[chosen], rel_biases=np.asarray(rels[chosen]))


# ----------------------------------------------------------------------------- bias audit

def _truncated_param_grad(model: nn.Module, inputs: Tensor, targets: Tensor, state,
                          loss_fn: LossFn, K: int) -> Tensor:
    """Flat parameter gradient of the summed last-step losses under TBPTT(K): the state
    is cut at lag K, so only the last K steps carry gradient (K = W: the full window)."""
    W = inputs.shape[0]
    params = [p for p in model.parameters() if p.requires_grad]
    state = _start_state(model, state, requires_grad=False)
    with _cuda_eval_guard(model, inputs):
        with torch.no_grad():
            state = _advance(model, inputs[:W - K], state)  # lags >= K: no gradient
        with torch.enable_grad():
            state = _advance(model, inputs[W - K:W - 1], state)
            out, _ = _readout(model, inputs[W - 1:], state)
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
