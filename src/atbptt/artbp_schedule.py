"""ARTBP's truncation schedules and the segment lengths they give (``atbptt.artbp`` runs them).

Source: C. Tallec, Y. Ollivier, *Unbiasing Truncated Backpropagation Through Time* (2017,
arXiv 1705.08209). At the n-th draw point after the last cut (draw points every ``stride``
steps) the backward pass is cut with probability ``c_n`` (the paper's truncation
probabilities); where it is not, the gradient crossing it is multiplied by ``1 / (1 - c_n)``.

- **Schedules** (``n`` = draw points since the last cut, ``m = K / stride`` the mean length in
  draw points; K is the mean segment length in steps):
  ``constant``: ``c_n = 1 / m``, geometric lengths, compensation growing like ``(1 - c)^-n``;
  ``poly``: ``c_n = (alpha - 1) / ((alpha - 2) m + n)`` (a length-dependent choice with
  a heavier tail than the geometric), mean exactly m (derived and tested here), tail
  ``P(N > n) ~ n^-(alpha-1)``, compensation growing only polynomially.
- **Lengths.** ``length_distribution``: the law of one segment's length (capped by
  ``max_length`` and the end of the split); ``draw_length``: one length drawn from it, ahead of
  the forward pass; ``last_cut_distribution``: where the last cut before the end of a window
  falls (the law behind ``artbp.relative_variance``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from .config import Config, TruncationSchedule


@dataclass(frozen=True)
class Schedule:
    """Truncation probabilities of ARTBP. ``mean_length`` K (steps, > ``stride``) is the mean
    segment length without a cap; ``max_length`` forces a cut (bounds memory, biases lags beyond
    it). Raises ValueError for a mean length <= stride or alpha <= 2."""

    mean_length: float
    kind: TruncationSchedule = TruncationSchedule.constant
    alpha: float = 4.0
    stride: int = 1
    max_length: Optional[int] = None

    def __post_init__(self) -> None:
        if not (self.stride >= 1 and self.mean_length > self.stride):
            raise ValueError(f"mean length {self.mean_length} must exceed the stride {self.stride}")
        if self.kind == TruncationSchedule.poly and not self.alpha > 2:
            raise ValueError(f"alpha={self.alpha} must be > 2 (finite mean length)")

    @staticmethod
    def from_config(cfg: Config) -> "Schedule":
        m = cfg.method
        return Schedule(float(cfg.K), m.artbp_schedule, m.artbp_alpha, m.artbp_stride,
                        m.artbp_max_length)

    def probability(self, n: int) -> float:
        """``c_n``: probability of a cut at the n-th draw point after the last cut (n >= 1)."""
        m = self.mean_length / self.stride
        if self.kind == TruncationSchedule.constant:
            return 1.0 / m
        return (self.alpha - 1) / ((self.alpha - 2) * m + n)

    def factor(self, n: int) -> float:
        """Compensation ``1 / (1 - c_n)`` where the n-th draw point said 'do not cut'."""
        return 1.0 / (1.0 - self.probability(n))

    def limit(self, remaining: int) -> int:
        """Longest segment possible with ``remaining`` steps left in the split."""
        return remaining if self.max_length is None else min(remaining, self.max_length)

    def describe(self) -> dict:
        """The parameters, as run.json records them."""
        constant = self.kind == TruncationSchedule.constant
        return {"schedule": self.kind.value, "mean_length": self.mean_length,
                "c": self.stride / self.mean_length if constant else None,
                "alpha": None if constant else self.alpha, "stride": self.stride,
                "max_length": self.max_length, "clip_lr_K": self.mean_length}


# ----------------------------------------------------------------------------- lengths

def length_distribution(schedule: Schedule, remaining: int) -> List[Tuple[int, float]]:
    """``[(L, P(segment length = L))]`` with ``remaining`` steps left: a cut at the n-th draw
    point (``L = n * stride``) has probability ``prod_{i<n} (1 - c_i) * c_n``; the segment ends
    at ``schedule.limit(remaining)`` with the probability left (no cut before it)."""
    limit, out, survive, n = schedule.limit(remaining), [], 1.0, 1
    while n * schedule.stride < limit:
        c = schedule.probability(n)
        out.append((n * schedule.stride, survive * c))
        survive *= 1.0 - c
        n += 1
    out.append((limit, survive))
    return out


def draw_length(schedule: Schedule, remaining: int,
                generator: Optional[torch.Generator] = None) -> int:
    """One segment length drawn ahead of the forward pass, with ``remaining`` steps left.

    One uniform u (float64, from ``generator``, else the global CPU RNG); the cut falls at the
    first draw point n where the survival ``prod_{i<=n} (1 - c_i)`` drops to u or below, which
    gives each n exactly ``length_distribution``'s probability."""
    u = float(torch.rand((), dtype=torch.float64, generator=generator))
    limit, survive, n = schedule.limit(remaining), 1.0, 1
    while n * schedule.stride < limit:
        survive *= 1.0 - schedule.probability(n)
        if survive <= u:
            return n * schedule.stride
        n += 1
    return limit


def last_cut_distribution(schedule: Schedule, window: int) -> np.ndarray:
    """``P[a]``: probability that the last cut before the end of a window of ``window`` steps is
    at step a (a cut at step 0, the window start), i.e. that the last step's loss backpropagates
    ``window - a`` steps. Renewal recursion over ``length_distribution``."""
    at = np.zeros(window + 1)
    at[0], last = 1.0, np.zeros(window)
    for a in range(window):
        if at[a] == 0.0:
            continue
        for length, p in length_distribution(schedule, window - a):
            if a + length == window:
                last[a] += at[a] * p
            else:
                at[a + length] += at[a] * p
    return last
