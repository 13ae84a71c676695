"""The adaptive-TBPTT estimator (NOTES §3, Algorithm 1): windows in, ``Estimate`` out.

``estimate`` draws windows of a training split, profiles them (``atbptt.profile``), fits β̂
and bounds the bias (``atbptt.bound``), and averages ``num_estimates`` profiles into one
``Estimate`` of δ̂(K) and K̂(δ). Nothing here trains or keeps state; the adaptive schedule
that acts on estimates is ``atbptt.controller``.

The estimator's public names are importable from here, wherever they live:

- ``atbptt.adapters``: ``RecurDecode``, ``check_layout``, ``initial_state``,
  ``native_cpu_kernels``, ``sample_windows`` (how any recurrent module is stepped, its zero
  state, windows of a split);
- ``atbptt.profile``: ``LossFn``, ``Profile``, ``grad_norm_profile``, ``profile_gradients``,
  ``profile_of``, ``true_relative_bias`` (the autograd profile and the bias audit; its module
  docstring states the lag convention);
- ``atbptt.bound``: ``LOG_FLOOR``, ``QUANTILE``, ``fit_beta``, ``bias_bound``, ``norm_sum``,
  ``lower_bound_curve``, ``relative_bias``, ``geometric_tail``, ``k_hat``, ``clamp_K``,
  ``choose_K``, ``average_K`` (numpy: β̂, E(K), δ̂(K), K̂(δ));
- ``atbptt.config``: ``Average``, ``BetaMethod``, ``GradNormBound``, ``Lag0``;
- here: ``DELTAS``, ``Estimate``, ``estimate``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from . import batched
from .adapters import (RecurDecode, burned_in, check_layout, device_of, initial_state,
                       native_cpu_kernels, sample_windows)
from .bound import (LOG_FLOOR, QUANTILE, average_K, bias_bound, choose_K, clamp_K, default_tau,
                    fit_beta, geometric_tail, k_hat, lower_bound_curve, norm_sum,
                    relative_bias, relative_from_bound)
from .config import Average, BetaMethod, GradNormBound, Lag0
from .profile import (LossFn, Profile, grad_norm_profile, profile_gradients, profile_of,
                      true_relative_bias)

__all__ = [
    "DELTAS", "Estimate", "estimate",
    "RecurDecode", "check_layout", "initial_state", "native_cpu_kernels", "sample_windows",
    "LossFn", "Profile", "grad_norm_profile", "profile_gradients", "profile_of",
    "true_relative_bias",
    "LOG_FLOOR", "QUANTILE", "fit_beta", "bias_bound", "norm_sum", "lower_bound_curve",
    "relative_bias", "geometric_tail", "k_hat", "clamp_K", "choose_K", "average_K",
    "Average", "BetaMethod", "GradNormBound", "Lag0",
]

DELTAS = (1.0, 0.9, 0.5, 0.1)  # K̂(δ) is computed and logged for these δ (NOTES §3)


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


def _profile_once(model, inputs, targets, *, window, burn_in, num_windows, loss_fn,
                  generator, device, init_state=None, lag0=None) -> Profile:
    """Sample windows, burn in from a zero state without grad, profile the last W steps."""
    x, y = sample_windows(inputs, targets, burn_in + window, num_windows, generator)
    x, y = x.to(device), y.to(device)
    state = burned_in(model, x, burn_in, device, init_state)
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
    float rounding; with dropout active other masks). Never changes the global RNG (training
    randomness is unaffected): windows come from ``generator``, and in training mode the
    dropout masks from a seed drawn from it. The caller
    sets the mode (the authors profile in training mode, dropout active). ``seconds`` is the
    wall clock. Raises ValueError on a bad argument or a NaN profile."""
    if num_estimates < 1 or num_windows < 1 or window < 1 or burn_in < 0:
        raise ValueError(f"need num_estimates >= 1 (got {num_estimates}), num_windows >= 1 "
                         f"(got {num_windows}), window >= 1 (got {window}), burn_in >= 0 "
                         f"(got {burn_in})")
    check_layout(model, inputs, targets)
    start = time.perf_counter()
    device = torch.device(device) if device is not None else device_of(model, inputs)
    k_max = window if k_max is None else k_max
    tau = default_tau(window, tau, burn_in)
    chosen, average = GradNormBound(grad_norm_bound), Average(average)
    phis, cums, betas = [], [], []
    rels = {b: [] for b in GradNormBound}
    found = Lag0.state_after_step
    sampling = dict(window=window, burn_in=burn_in, num_windows=num_windows, loss_fn=loss_fn,
                    generator=generator, device=device, init_state=init_state, lag0=lag0)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        if batch_estimates:
            profiles = batched.profiles_together(model, inputs, targets, num_estimates,
                                                 **sampling)
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
        pooled = {b: relative_from_bound(E, lower_bound_curve(phi_mean, cum_mean, b))
                  for b in GradNormBound}
        by_bound = {b: (rel, {d: choose_K(rel, d, k_min, k_max) for d in deltas})
                    for b, rel in pooled.items()}
    rel_bias, K_hat = by_bound[chosen]
    return Estimate(phi=phi_mean, cum=cum_mean, beta_hat=beta_hat, rel_bias=rel_bias,
                    K_hat=K_hat, tail=geometric_tail(phi_mean, beta_hat, tau), tau=tau,
                    seconds=time.perf_counter() - start, betas=np.asarray(betas),
                    grad_norm_bound=chosen, by_bound=by_bound, lag0=found, average=average,
                    k_hats=k_hats[chosen], rel_biases=np.asarray(rels[chosen]))
