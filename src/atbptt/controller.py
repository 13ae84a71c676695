"""``AdaptiveTruncation``: adaptive TBPTT in a plain PyTorch training loop (NOTES §3, steps 6–7).

The one implementation of the adaptive schedule: ``atbptt.train`` drives it exactly as a
user's loop would. The object owns what happens around the estimator: the schedule (K0
until the first update, then K̂(δ) after every interval of ``reestimate_every`` units or
``reestimate_seconds`` of training), how several estimates become one K (``average``), the
windows' random generator (the global RNG, hence the training randomness, is never touched),
the model's mode while profiling, and the time spent. A loop changes in two lines::

    ctl = AdaptiveTruncation(model, train_inputs, train_targets, nn.CrossEntropyLoss(),
                             delta=0.1, K0=35)
    while training:
        K = ctl.K                    # 1. the truncation of the next chunk
        ...                          #    forward K steps from the detached state, backward, step
        ctl.step(K)                  # 2. the time steps this update consumed; may re-estimate K
"""
from __future__ import annotations

import numbers
import time
from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor, nn

from . import adaptive
from .config import Average, BetaMethod, GradNormBound, Lag0

LOGGED_DELTAS = adaptive.DELTAS  # K̂(δ) also computed for these (as the runs log them)


def run_estimate(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn, *,
                 generator: torch.Generator, profile_dropout: bool = True,
                 **options) -> adaptive.Estimate:
    """``adaptive.estimate`` with the model in training mode (``profile_dropout``, dropout
    active as the authors profile) or eval mode; the model's mode is restored after.
    ``options``: the keywords of ``adaptive.estimate``. Raises what it raises."""
    was_training = model.training
    model.train(profile_dropout)
    try:
        return adaptive.estimate(model, inputs, targets, loss_fn=loss_fn, generator=generator,
                                 **options)
    finally:
        model.train(was_training)


_OPTIONAL = ("burn_in", "k_max", "K0")  # None picks a default


def _require_numbers(delta: Any, **counts: Any) -> None:
    """ValueError naming the first argument of the wrong type: ``delta`` a real number, the
    counts integers (bools excluded), None only where it picks a default."""
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
        raise ValueError(f"delta={delta!r} must be a number in (0, 1]")
    for name, value in counts.items():
        if value is None and name in _OPTIONAL:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name}={value!r} must be an integer")


class AdaptiveTruncation:
    """Chooses the truncation K of a user's TBPTT loop so that δ̂(K) < ``delta``.

    ``model``: any module ``forward(x, state) -> (out, state)`` (``adaptive.RecurDecode``
    makes the profile faster); its zero state comes from ``init_state(S)`` if given, else
    ``model.init_state(S, device)`` or ``model.init_hidden(S)``. ``inputs``/``targets``: the
    training split as time-major streams ``[T, B, ...]`` (e.g. pytorch/examples' batchified
    data ``[:-1]`` and ``[1:]``). ``loss_fn(out [S, O], target [S, ...])`` -> ``[S]`` or a
    mean/sum scalar (``nn.CrossEntropyLoss()`` works; the same K̂).

    Estimator (NOTES §3): ``window`` W lags, ``burn_in`` steps without gradient (default
    W // 10), ``num_windows`` S per profile, ``beta_method``, ``tau``, ``grad_norm_bound``
    (``grad``: norm of the averaged cumulative gradient, the theory's; ``norm_sum``: sum of
    mean norms, the paper's LM runs), ``lag0`` (``None``: found from the model;
    ``state_entering_step``: the authors' convention). One K update takes ``num_estimates``
    independent estimates, each from its own profile of S windows, combined by ``average``
    (``k_hat``: the authors' clamp(int(mean of unclamped K̂)); ``profiles``: K̂ of the pooled
    profile). K is clamped to [``k_min``, ``k_max``] (``k_max`` ≤ W, default W).
    ``batch_estimates``: the ``num_estimates`` profiles of an update (and of
    ``fresh_estimate``) in one pass over N×S windows (``atbptt.batched``: the same windows; in
    eval mode the same numbers up to float rounding, with dropout active other masks).

    Schedule (NOTES §3 step 7): ``K0`` is used until the first update, which comes after the
    first interval; an update comes once ``reestimate_every`` units have been passed to
    ``step`` since the last one, or (if set) ``reestimate_seconds`` of training, whichever
    first. K changes only at updates. ``K0=None``: estimate at once. ``seed`` seeds the
    windows. Raises ValueError naming the argument on a bad setting (a count that is not an
    integer, a value out of range), a split shorter than ``burn_in + window``, inputs and
    targets that are not time-major tensors ``[T, B, ...]`` of one T and B, or a model with a
    ``batch_first=True`` layer (``adaptive.check_layout``)."""

    def __init__(self, model: nn.Module, inputs: Tensor, targets: Tensor,
                 loss_fn: Callable[[Tensor, Tensor], Tensor], *, delta: float = 0.1,
                 K0: Optional[int] = None, window: int = 100, burn_in: Optional[int] = None,
                 num_windows: int = 32, num_estimates: int = 1, k_min: int = 2,
                 k_max: Optional[int] = None, reestimate_every: int = 2500,
                 reestimate_seconds: Optional[float] = None,
                 beta_method: BetaMethod | str = BetaMethod.ols, tau: Optional[int] = None,
                 grad_norm_bound: GradNormBound | str = GradNormBound.grad,
                 average: Average | str = Average.k_hat, lag0: Lag0 | str | None = None,
                 profile_dropout: bool = True, init_state: Optional[Callable[[int], Any]] = None,
                 device: torch.device | str | None = None, seed: int = 0,
                 batch_estimates: bool = False):
        self.model, self.inputs, self.targets, self.loss_fn = model, inputs, targets, loss_fn
        _require_numbers(delta, window=window, num_windows=num_windows, num_estimates=num_estimates,
                         k_min=k_min, k_max=k_max, burn_in=burn_in,
                         reestimate_every=reestimate_every, K0=K0)
        adaptive.check_layout(model, inputs, targets)  # before inputs.shape is read
        self.delta, self.window = float(delta), int(window)
        self.burn_in = self.window // 10 if burn_in is None else int(burn_in)
        self.k_min, self.k_max = int(k_min), self.window if k_max is None else int(k_max)
        self.reestimate_every = int(reestimate_every)
        self.reestimate_seconds = None if reestimate_seconds is None else float(reestimate_seconds)
        self.profile_dropout = profile_dropout
        self._check(K0, inputs.shape[0], num_windows, num_estimates)
        self.options = dict(
            window=self.window, burn_in=self.burn_in, num_windows=int(num_windows),
            num_estimates=int(num_estimates), beta_method=BetaMethod(beta_method), tau=tau,
            grad_norm_bound=GradNormBound(grad_norm_bound), average=Average(average),
            lag0=None if lag0 is None else Lag0(lag0), init_state=init_state, device=device,
            k_min=self.k_min, k_max=self.k_max, batch_estimates=bool(batch_estimates),
            deltas=tuple(dict.fromkeys((*LOGGED_DELTAS, self.delta))))
        self.generator = torch.Generator().manual_seed(seed)
        self.estimate: Optional[adaptive.Estimate] = None  # the latest
        self.seconds = 0.0  # wall clock spent estimating, all updates
        self.num_estimates_done = 0  # K updates so far
        self.since_estimate = 0  # units passed to step() since the last update
        self.seconds_since = 0.0  # training seconds since the last update
        self._last_call: Optional[float] = None
        self.K = int(K0) if K0 is not None else self.reestimate()

    def _check(self, K0: Optional[int], length: int, num_windows: int, num_estimates: int) -> None:
        if not 0 < self.delta <= 1:
            raise ValueError(f"delta={self.delta} must be in (0, 1]")
        if self.window < 1 or self.burn_in < 0 or self.reestimate_every < 1:
            raise ValueError("window and reestimate_every must be >= 1, burn_in >= 0")
        if self.reestimate_seconds is not None and not self.reestimate_seconds > 0:
            raise ValueError(f"reestimate_seconds={self.reestimate_seconds} must be > 0 or None")
        if num_windows < 1 or num_estimates < 1:
            raise ValueError(f"num_windows={num_windows} and num_estimates={num_estimates} "
                             "must be >= 1")
        if not 1 <= self.k_min <= self.k_max <= self.window:
            raise ValueError(f"need 1 <= k_min ({self.k_min}) <= k_max ({self.k_max}) <= "
                             f"window ({self.window})")
        if K0 is not None and K0 < 1:
            raise ValueError(f"K0={K0} must be >= 1 (or None: estimate at once)")
        if length < self.burn_in + self.window:
            raise ValueError(f"the training split has {length} steps; windows need burn_in + "
                             f"window = {self.burn_in + self.window}")

    # ------------------------------------------------------------------ the two calls
    def step(self, steps: int = 1, seconds: Optional[float] = None) -> bool:
        """Count one update: ``steps`` units (the time steps per stream it consumed, or 1 per
        update: the unit of ``reestimate_every``) and ``seconds`` of training (default: the
        wall clock since the previous call, less any estimate; only ``reestimate_seconds``
        reads it). Updates K when an interval is complete. Returns whether K was updated."""
        now = time.perf_counter()
        if seconds is None:
            seconds = 0.0 if self._last_call is None else now - self._last_call
        self._last_call = now
        self.since_estimate += int(steps)
        self.seconds_since += float(seconds)
        if not self.due:
            return False
        self.reestimate()
        self._last_call = time.perf_counter()
        return True

    @property
    def due(self) -> bool:
        """Whether the current interval is complete (units or seconds, whichever first)."""
        return self.since_estimate >= self.reestimate_every or (
            self.reestimate_seconds is not None and self.seconds_since >= self.reestimate_seconds)

    def reestimate(self) -> int:
        """An update now: K <- K̂(δ) from ``num_estimates`` fresh estimates; returns the new K."""
        est = run_estimate(self.model, self.inputs, self.targets, self.loss_fn,
                           generator=self.generator, profile_dropout=self.profile_dropout,
                           **self.options)
        self.estimate, self.seconds = est, self.seconds + est.seconds
        self.num_estimates_done += 1
        self.since_estimate, self.seconds_since = 0, 0.0
        self.K = est.K_hat[self.delta]
        return self.K

    def fresh_estimate(self, num_estimates: int, generator: torch.Generator) -> adaptive.Estimate:
        """A diagnostic estimate from ``num_estimates`` profiles drawn from ``generator``: the
        same estimator, but K, the schedule and the windows' generator are left alone (the
        authors' logged δ̂ and K̂, NOTES §3). Raises ValueError if ``num_estimates`` < 1."""
        options = {**self.options, "num_estimates": int(num_estimates)}
        return run_estimate(self.model, self.inputs, self.targets, self.loss_fn,
                            generator=generator, profile_dropout=self.profile_dropout, **options)

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
        return {"K": self.K, "since_estimate": self.since_estimate,
                "seconds_since": self.seconds_since, "seconds": self.seconds,
                "num_estimates_done": self.num_estimates_done,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Resume from ``state_dict()``: the next estimates equal an uninterrupted run's."""
        self.K, self.since_estimate = int(state["K"]), int(state["since_estimate"])
        self.seconds_since = float(state.get("seconds_since", 0.0))
        self.seconds = float(state["seconds"])
        self.num_estimates_done = int(state["num_estimates_done"])
        self.generator.set_state(state["generator"])
        self._last_call = None

    def __repr__(self) -> str:
        est = self.estimate
        if est is None:
            return f"AdaptiveTruncation(K={self.K}, delta={self.delta}, no estimate yet)"
        return (f"AdaptiveTruncation(K={self.K}, delta={self.delta}, "
                f"delta_hat={self.delta_hat:.4g}, K_hat={self.K_hat}, "
                f"beta_hat={est.beta_hat:.4f}, lag0={est.lag0.value}, "
                f"estimates={self.num_estimates_done}, seconds={self.seconds:.2f})")
