"""What a TBPTT loop truncates by: ``Fixed`` K, the ``Adaptive`` rule, or ``ARTBP`` draws.

Plain settings (frozen dataclasses, no Lightning needed); ``atbptt.lightning.TBPTTMixin``
reads them. Bad values raise ``ValueError`` with one line naming the key and what is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from torch import Tensor

from . import artbp
from .config import TruncationSchedule


@dataclass(frozen=True)
class Fixed:
    """Truncation every ``K`` steps (``K >= 1``; K = the stream length is full BPTT)."""

    K: int

    def __post_init__(self) -> None:
        if not (isinstance(self.K, int) and self.K >= 1):
            raise ValueError(f"K={self.K!r} is not allowed; K must be an integer >= 1")


@dataclass(frozen=True, eq=False)
class Adaptive:
    """The paper's rule through ``AdaptiveTruncation``: K̂(δ) re-estimated every
    ``reestimate_every`` time steps. ``inputs``/``targets``: the training streams
    ``[T, B, ...]`` the windows are drawn from (default: those of the train ``stream_loader``).
    ``options``: further constructor keywords of ``AdaptiveTruncation`` (``num_estimates``,
    ``beta_method``, ``tau``, ``profile_dropout``, ...). Bad values raise ``ValueError``
    when the controller is built (at the start of training)."""

    delta: float = 0.1
    K0: Optional[int] = None
    window: int = 100
    burn_in: Optional[int] = None
    num_windows: int = 32
    k_min: int = 2
    k_max: Optional[int] = None
    reestimate_every: int = 2500
    grad_norm_bound: str = "grad"
    seed: int = 0
    inputs: Optional[Tensor] = None
    targets: Optional[Tensor] = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ARTBP:
    """Unbiased random truncation (Tallec & Ollivier 2017) with mean segment length
    ``mean_length`` steps (> ``stride``); ``schedule`` ``constant`` or ``poly`` (``alpha`` > 2),
    draw points every ``stride`` steps, optional forced cut ``max_length``; draws from a
    generator seeded with ``seed``. Raises ValueError for a bad schedule."""

    mean_length: float
    schedule: str = "constant"
    alpha: float = 4.0
    stride: int = 1
    max_length: Optional[int] = None
    seed: int = 0

    def to_schedule(self) -> artbp.Schedule:
        try:
            kind = TruncationSchedule(self.schedule)
        except ValueError:
            raise ValueError(f"schedule={self.schedule!r} is not allowed; allowed: "
                             f"{', '.join(s.value for s in TruncationSchedule)}") from None
        return artbp.Schedule(float(self.mean_length), kind, self.alpha, self.stride,
                              self.max_length)
