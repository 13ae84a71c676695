"""The bound on the bias of TBPTT(K) from a profile (NOTES §3 steps 3–6): numpy only.

β̂ (``fit_beta``), E(K) (``bias_bound``), ℓ and δ̂(K) (``relative_bias``) under either
stand-in for ‖E ĝ_K‖ (``lower_bound_curve``), the fitted tail (``geometric_tail``) and K̂(δ)
(``k_hat``, ``choose_K``, ``average_K``). Arrays in, numbers out; the profile that feeds them
is ``atbptt.profile``'s.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from .config import BetaMethod, GradNormBound

LOG_FLOOR = -50.0  # log φ̂ at or below this counts as numerically zero (NOTES §3 step 3)
QUANTILE = 0.95  # 'quantile' β̂: this quantile of the pairwise tail slopes


def _check_finite(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or inf: the gradient-norm profile is unusable")


def default_tau(W: int, tau: Optional[int], burn_in: Optional[int]) -> int:
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


def relative_from_bound(E: np.ndarray, cum: np.ndarray) -> np.ndarray:
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
    tau = default_tau(phi_mean.size, tau, burn_in)
    beta_hat = fit_beta(phi_mean, beta_method, tau)
    curve = lower_bound_curve(phi_mean, cum, grad_norm_bound)
    return beta_hat, relative_from_bound(bias_bound(phi_mean, beta_hat, tau), curve)


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
