"""``AdaptiveTruncation``: adaptive TBPTT in a plain PyTorch training loop (NOTES §3, step 7).

The object owns what the training loop of ``atbptt.train`` does around the estimator: the
schedule (re-estimate K̂(δ) every so many time steps), the windows' random generator (the
global RNG, hence the training randomness, is never touched), the model's mode while
profiling, and the time spent. A loop changes in two lines::

    ctl = AdaptiveTruncation(model, train_inputs, train_targets, nn.CrossEntropyLoss(),
                             delta=0.1, K0=35)
    while training:
        K = ctl.K                    # 1. the truncation of the next chunk
        ...                          #    forward K steps from the detached state, backward, step
        ctl.step(K)                  # 2. the time steps this update consumed; may re-estimate K
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor, nn

from . import adaptive
from .config import BetaMethod, GradNormBound

LOGGED_DELTAS = (1.0, 0.9, 0.5, 0.1)  # K̂(δ) also computed for these (as the runs log them)


class AdaptiveTruncation:
    """Chooses the truncation K of a user's TBPTT loop so that δ̂(K) < ``delta``.

    ``model``: any module ``forward(x, state) -> (out, state)`` (``adaptive.RecurDecode``
    makes the profile faster); its zero state comes from ``init_state(S)`` if given, else
    ``model.init_state(S, device)`` or ``model.init_hidden(S)``. ``inputs``/``targets``: the
    training split as time-major streams ``[T, B, ...]`` (e.g. pytorch/examples' batchified
    data ``[:-1]`` and ``[1:]``). ``loss_fn(out [S, O], target [S, ...])`` -> ``[S]`` or a
    mean/sum scalar (``nn.CrossEntropyLoss()`` works; the same K̂).

    Estimator (NOTES §3): ``window`` W lags, ``burn_in`` steps without gradient (default
    W // 10), ``num_windows`` S, ``num_estimates`` profiles averaged, ``beta_method``,
    ``tau``, ``grad_norm_bound`` (``grad``: norm of the averaged cumulative gradient, the
    theory's; ``norm_sum``: sum of mean norms, the paper's LM runs). K̂(δ) is clamped to
    [``k_min``, ``k_max``] (``k_max`` ≤ W, default W). ``K0``: the K until the first
    estimate, which comes after ``reestimate_every`` units passed to ``step``; ``None``:
    estimate at once. ``profile_dropout``: profile in training mode (dropout active, as
    the authors do); the model's mode is restored after. ``seed`` seeds the windows.
    Raises ValueError on a bad setting or a split shorter than ``burn_in + window``."""

    def __init__(self, model: nn.Module, inputs: Tensor, targets: Tensor,
                 loss_fn: Callable[[Tensor, Tensor], Tensor], *, delta: float = 0.1,
                 K0: Optional[int] = None, window: int = 100, burn_in: Optional[int] = None,
                 num_windows: int = 32, num_estimates: int = 1, k_min: int = 2,
                 k_max: Optional[int] = None, reestimate_every: int = 2500,
                 beta_method: BetaMethod | str = BetaMethod.ols, tau: Optional[int] = None,
                 grad_norm_bound: GradNormBound | str = GradNormBound.grad,
                 profile_dropout: bool = True, init_state: Optional[Callable[[int], Any]] = None,
                 device: torch.device | str | None = None, seed: int = 0):
        self.model, self.inputs, self.targets, self.loss_fn = model, inputs, targets, loss_fn
        self.delta, self.window = float(delta), int(window)
        self.burn_in = self.window // 10 if burn_in is None else int(burn_in)
        self.k_min, self.k_max = int(k_min), self.window if k_max is None else int(k_max)
        self.reestimate_every = int(reestimate_every)
        self.options = dict(num_windows=num_windows, num_estimates=num_estimates,
                            beta_method=BetaMethod(beta_method), tau=tau,
                            grad_norm_bound=GradNormBound(grad_norm_bound),
                            init_state=init_state, device=device)
        self.profile_dropout = profile_dropout
        self._check(K0, inputs.shape[0])
        self.generator = torch.Generator().manual_seed(seed)
        self.estimate: Optional[adaptive.Estimate] = None  # the latest
        self.seconds = 0.0  # wall clock spent estimating, all estimates
        self.num_estimates_done = 0
        self.since_estimate = 0  # units passed to step() since the last estimate
        self.K = int(K0) if K0 is not None else self.reestimate()

    def _check(self, K0: Optional[int], length: int) -> None:
        if not 0 < self.delta <= 1:
            raise ValueError(f"delta={self.delta} must be in (0, 1]")
        if self.window < 1 or self.burn_in < 0 or self.reestimate_every < 1:
            raise ValueError("window and reestimate_every must be >= 1, burn_in >= 0")
        if not 1 <= self.k_min <= self.k_max <= self.window:
            raise ValueError(f"need 1 <= k_min ({self.k_min}) <= k_max ({self.k_max}) <= "
                             f"window ({self.window})")
        if K0 is not None and K0 < 1:
            raise ValueError(f"K0={K0} must be >= 1 (or None: estimate at once)")
        if length < self.burn_in + self.window:
            raise ValueError(f"the training split has {length} steps; windows need burn_in + "
                             f"window = {self.burn_in + self.window}")

    # ------------------------------------------------------------------ the two calls
    def step(self, steps: int = 1) -> bool:
        """Count ``steps`` (the time steps per stream the last update consumed, or 1 per
        update: the unit of ``reestimate_every``); re-estimate K when that many have passed
        since the last estimate. Returns whether K was re-estimated."""
        self.since_estimate += int(steps)
        if self.since_estimate < self.reestimate_every:
            return False
        self.reestimate()
        return True

    def reestimate(self) -> int:
        """A fresh estimate now: K <- K̂(δ); returns the new K. The model's mode is restored."""
        was_training = self.model.training
        self.model.train(self.profile_dropout)
        try:
            est = adaptive.estimate(
                self.model, self.inputs, self.targets, window=self.window, burn_in=self.burn_in,
                loss_fn=self.loss_fn, generator=self.generator, k_min=self.k_min,
                k_max=self.k_max, deltas=tuple(dict.fromkeys((*LOGGED_DELTAS, self.delta))),
                **self.options)
        finally:
            self.model.train(was_training)
        self.estimate, self.seconds = est, self.seconds + est.seconds
        self.num_estimates_done += 1
        self.since_estimate = 0
        self.K = est.K_hat[self.delta]
        return self.K

    # ------------------------------------------------------------------ what it knows
    @property
    def delta_hat(self) -> Optional[float]:
        """δ̂(K) of the K in use, from the latest estimate (None before the first)."""
        return None if self.estimate is None else self.estimate.delta_hat(self.K)

    @property
    def K_hat(self) -> Optional[int]:
        """K̂(δ) of the latest estimate (None before the first)."""
        return None if self.estimate is None else self.estimate.K_hat[self.delta]

    @property
    def beta_hat(self) -> Optional[float]:
        """β̂, the fitted decay rate of the gradient norms (None before the first estimate)."""
        return None if self.estimate is None else self.estimate.beta_hat

    def state_dict(self) -> Dict[str, Any]:
        """The schedule, K, timing and the windows' generator, for a checkpoint."""
        return {"K": self.K, "since_estimate": self.since_estimate, "seconds": self.seconds,
                "num_estimates_done": self.num_estimates_done,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Resume from ``state_dict()``: the next estimates equal an uninterrupted run's."""
        self.K, self.since_estimate = int(state["K"]), int(state["since_estimate"])
        self.seconds, self.num_estimates_done = float(state["seconds"]), int(state["num_estimates_done"])
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        est = self.estimate
        if est is None:
            return f"AdaptiveTruncation(K={self.K}, delta={self.delta}, no estimate yet)"
        return (f"AdaptiveTruncation(K={self.K}, delta={self.delta}, delta_hat={self.delta_hat:.4g}, "
                f"K_hat={self.K_hat}, beta_hat={est.beta_hat:.4f}, lag0={est.lag0.value}, "
                f"estimates={self.num_estimates_done}, seconds={self.seconds:.2f})")
