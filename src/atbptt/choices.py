"""The allowed values of every enumerated configuration key (``dataset.name``, ``model.cell``,
``method.name``, ...), one ``Enum`` per key.

Enums because OmegaConf 2.3 has no ``Literal``: a YAML string is checked against the members'
values when Hydra builds the schema of ``atbptt.config``, which re-exports these names.
"""
from __future__ import annotations

from enum import Enum


class DatasetName(Enum):
    copy = "copy"
    copy_variable = "copy_variable"
    copy_paper = "copy_paper"  # the paper's own copy data, fixed m = 10 (NOTES §5)
    copy_variable_paper = "copy_variable_paper"  # the paper's own data, m in [5, 10]
    linear = "linear"
    var = "var"
    ptb = "ptb"
    wikitext2 = "wikitext2"


class Cell(Enum):
    lstm = "lstm"
    gru = "gru"
    srnn = "srnn"  # simple (Elman) tanh RNN


class MethodName(Enum):
    fixed = "fixed"
    adaptive = "adaptive"
    artbp = "artbp"  # unbiased random truncation (Tallec & Ollivier 2017); K is the mean length


class Style(Enum):
    overlap = "overlap"  # the paper's: every loss term gets >= K lags
    chunk = "chunk"  # pytorch/examples: loss at position j gets j+1 lags


class TruncationSchedule(Enum):
    """ARTBP's truncation probabilities c_n at the n-th draw point after a cut
    (src/atbptt/artbp_schedule.py)."""

    constant = "constant"  # c_n = 1/m, m = K / stride: geometric lengths with mean K
    poly = "poly"  # c_n = (alpha - 1) / ((alpha - 2) m + n): polynomial tail, mean K


class Init(Enum):
    """Initial weights (NOTES §4, Initialization)."""

    paper = "paper"  # every matrix uniform in ±sqrt(3 / max(rows, cols)), every vector zero
    # PyTorch's defaults (nn.Embedding N(0, 1), nn.LSTM/Linear uniform ±1/sqrt(fan))
    torch = "torch"


class GradNormBound(Enum):
    """Stand-in for ‖E ĝ_K‖/M in the lower bound ℓ on ‖g‖ (NOTES §3 step 2)."""

    # G_k = ‖mean over windows of Σ_{j≤k} ∂L/∂h at lag j‖ (the theory's; synthetic runs)
    grad = "grad"
    norm_sum = "norm_sum"  # G_k = Σ_{j≤k} φ̂_j, cumulative sum of mean norms (the paper's LM runs)


class Lag0(str, Enum):
    """Which state the gradient-norm profile calls lag 0 (NOTES §3 step 2, lag convention)."""

    state_after_step = "state_after_step"  # s_W, returned by the last step: the paper's formulas
    # s_{W-1}, entering the last step: the authors' code
    state_entering_step = "state_entering_step"


class Average(Enum):
    """How ``method.num_estimates`` independent estimates become one K (NOTES §3 step 6)."""

    k_hat = "k_hat"  # the authors': clamp(int(mean of the unclamped K̂ values), k_min, k_max)
    profiles = "profiles"  # K̂ of the pooled profile (all windows' φ̂, mean G, mean β̂)


class LogFrom(Enum):
    """Where an adaptive run's logged β̂, δ̂(K) and K̂(δ) come from (fixed K: always fresh)."""

    chosen = "chosen"  # the estimate that chose the K in use
    # method.log_estimates fresh estimates at each evaluation, averaged (the authors')
    fresh = "fresh"


class BetaMethod(Enum):
    ols = "ols"
    max = "max"
    quantile = "quantile"


class Logger(Enum):
    """Where evaluation rows go besides ``metrics.csv``, which is always written."""

    csv = "csv"  # metrics.csv and profiles/ only
    tensorboard = "tensorboard"  # also <run dir>/tb/ (needs the tensorboard package)


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
