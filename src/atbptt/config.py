"""Typed configuration: the dataclass schema Hydra validates every value against.

Hydra composes YAML from ``conf/`` on top of these dataclasses (stored in the
ConfigStore as ``base_config``); ``OmegaConf.to_object`` then builds these
objects and runs the ``__post_init__`` range checks, each raising ``ConfigError`` with one
line that names the key and what is allowed. The choices of enumerated keys are in
``atbptt.choices``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from .choices import (  # noqa: F401  (re-exported: the schema's choices)
    DatasetName, Cell, MethodName, Style, TruncationSchedule, Init, GradNormBound, Lag0, Average,
    LogFrom, BetaMethod, Logger, Device,
)
from .errors import ConfigError  # noqa: F401  (re-exported)


def _check(ok: bool, key: str, allowed: str, value) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed; {key} must be {allowed}")


@dataclass
class DatasetConfig:
    name: DatasetName = DatasetName.copy
    seed: int = 0  # synthetic data seed: fixed so every run of a sweep sees the same data
    batch_size: int = 64  # parallel training streams
    eval_batch_size: int = 64  # streams for valid/test evaluation
    eval_chunk: int = 100  # evaluation chunk length (state carried, no grad)
    train_length: int = 4000  # synthetic: steps per training stream
    eval_length: int = 1000  # synthetic: steps per valid/test stream
    # copy task
    m_min: int = 10
    m_max: int = 10
    num_symbols: int = 6  # 0 blank, 1 start marker, 2.. content
    # linear state-space system and VAR(p)
    input_dim: int = 4
    state_dim: int = 8
    output_dim: int = 2
    dim: int = 4  # VAR dimension
    order: int = 2  # VAR order p
    rho: float = 0.9  # spectral radius of A (linear) or of the companion matrix (var)
    noise_std: float = 0.1
    # word corpora
    data_dir: Optional[str] = None  # default: $ATBPTT_DATA, else data/ in the working directory

    def __post_init__(self) -> None:
        for key in ("batch_size", "eval_batch_size", "eval_chunk", "train_length", "eval_length",
                    "input_dim", "state_dim", "output_dim", "dim", "order"):
            value = getattr(self, key)
            _check(value >= 1, f"dataset.{key}", "an integer >= 1", value)
        _check(2 <= self.m_min <= self.m_max, "dataset.m_min", "between 2 and dataset.m_max",
               self.m_min)
        _check(self.num_symbols >= 3, "dataset.num_symbols", "an integer >= 3", self.num_symbols)
        _check(0 < self.rho < 1, "dataset.rho", "in (0, 1)", self.rho)
        _check(self.noise_std >= 0, "dataset.noise_std", ">= 0", self.noise_std)


@dataclass
class ModelConfig:
    cell: Cell = Cell.lstm
    hidden_size: int = 50
    num_layers: int = 2
    embedding_size: int = 50  # token inputs; the linear input layer's width for vectors
    dropout: float = 0.0
    tie_weights: bool = False  # needs embedding_size == hidden_size
    init: Init = Init.paper  # initial weights: the paper's uniform scheme, or PyTorch's defaults

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_layers", "embedding_size"):
            value = getattr(self, key)
            _check(value >= 1, f"model.{key}", "an integer >= 1", value)
        _check(0 <= self.dropout < 1, "model.dropout", "in [0, 1)", self.dropout)
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise ConfigError(
                "model.tie_weights=true needs model.embedding_size == model.hidden_size")


@dataclass
class MethodConfig:
    """How K is chosen, and the estimator behind δ̂(K) (also logged for fixed K)."""

    name: MethodName = MethodName.fixed
    style: Style = Style.overlap
    window: int = 100  # W: lags in one gradient-norm profile
    burn_in: int = 20  # b: steps run without gradient before each window
    num_windows: int = 64  # S: windows per profile
    k_min: int = 2
    k_max: int = 100
    beta_method: BetaMethod = BetaMethod.ols
    tau: Optional[int] = None  # default W - b (NOTES §3 step 3)
    reestimate_every: int = 10  # training chunks between re-estimates of K (adaptive)
    # or, when set, time steps (positions per stream) between re-estimates: keeps the estimator's
    # share of training time the same whatever K is (a K=10 chunk costs ~1/10 of a K=100 one)
    reestimate_steps: Optional[int] = None
    # or, when set, also every this many seconds of training (whichever comes first): the
    # authors' wall-clock "step" (NOTES §3 step 7); machine-dependent, so not reproducible
    reestimate_seconds: Optional[float] = None
    num_estimates: int = 1  # independent estimates (each its own profile) behind one K
    average: Average = Average.k_hat  # how they are combined: K̂ values (authors') or profiles
    # lag 0 of the profile: the state after the last step (the paper's formulas) or the state
    # entering it (the authors' code; K̂ larger on PTB, see docs/method.md, "Lag convention")
    lag0: Lag0 = Lag0.state_after_step
    log_estimates: int = 1  # fresh estimates averaged per evaluation for the logs (0: skip)
    # adaptive runs: log the estimate that chose K, or fresh ones
    log_from: LogFrom = LogFrom.chosen
    audit: bool = False  # also log the true relative bias of TBPTT(K) on the windows
    # stand-in for ‖E ĝ_K‖ in δ̂(K) (both are logged; this one sets K): dataset files choose the
    # paper's (grad for synthetic tasks, norm_sum for PTB / WikiText-2)
    grad_norm_bound: GradNormBound = GradNormBound.grad
    # profile with dropout active, as the authors' estimator does (training mode); false: eval mode
    profile_dropout: bool = True
    # the num_estimates profiles of one update (and the logged fresh ones) in one pass over
    # N x S windows (src/atbptt/batched.py): the same windows; in eval mode the same numbers up
    # to float rounding, with dropout active other masks. Off: N passes, as the committed runs
    batch_estimates: bool = False
    # method=artbp (K is the mean truncation length; see src/atbptt/artbp.py and docs/artbp.md)
    artbp_schedule: TruncationSchedule = TruncationSchedule.constant
    artbp_alpha: float = 4.0  # tail exponent of the poly schedule (> 3: finite variance of lengths)
    artbp_stride: int = 1  # truncation points may fall every artbp_stride steps after a cut
    artbp_max_length: Optional[int] = None  # forced cut (memory bound; biases lags beyond it)
    artbp_draws: int = 16  # truncation draws behind the logged gradient relative variance (0: skip)
    # a segment's recurrence through the fused kernel, the compensation in its backward pass
    # (src/atbptt/artbp_fused.py); false: one step at a time between draw points (same draws,
    # same gradient up to float rounding)
    artbp_fused: bool = True

    def __post_init__(self) -> None:
        for key in ("window", "num_windows", "k_min", "k_max", "reestimate_every", "num_estimates"):
            value = getattr(self, key)
            _check(value >= 1, f"method.{key}", "an integer >= 1", value)
        _check(self.reestimate_steps is None or self.reestimate_steps >= 1,
               "method.reestimate_steps", "an integer >= 1 or null", self.reestimate_steps)
        _check(self.reestimate_seconds is None or (self.reestimate_seconds > 0 and
               math.isfinite(self.reestimate_seconds)), "method.reestimate_seconds",
               "a number > 0 or null", self.reestimate_seconds)
        _check(self.burn_in >= 0, "method.burn_in", "an integer >= 0", self.burn_in)
        _check(self.log_estimates >= 0, "method.log_estimates", "an integer >= 0",
               self.log_estimates)
        _check(self.k_min <= self.k_max, "method.k_min", f"<= method.k_max ({self.k_max})",
               self.k_min)
        if self.name == MethodName.adaptive:
            _check(self.window >= self.k_max, "method.window",
                   f">= method.k_max ({self.k_max}) for method=adaptive", self.window)
        if self.tau is not None:
            _check(1 <= self.tau < self.window, "method.tau", "in [1, method.window)", self.tau)
        self._check_artbp()

    def _check_artbp(self) -> None:
        _check(self.artbp_alpha > 3 and math.isfinite(self.artbp_alpha), "method.artbp_alpha",
               "a finite number > 3", self.artbp_alpha)
        _check(self.artbp_stride >= 1, "method.artbp_stride", "an integer >= 1", self.artbp_stride)
        _check(self.artbp_draws >= 0, "method.artbp_draws", "an integer >= 0", self.artbp_draws)
        _check(self.artbp_max_length is None or self.artbp_max_length >= 1,
               "method.artbp_max_length", "an integer >= 1 or null", self.artbp_max_length)
        if self.name == MethodName.artbp:
            _check(self.style == Style.chunk, "method.style",
                   "chunk for method=artbp "
                   "(method.name=artbp: its segments start at its truncation points)",
                   self.style.value)


@dataclass
class OptimConfig:
    lr: float = 1.0
    lr_power: float = 0.5  # SGD step lr * K**lr_power, recomputed when K changes
    clip: float = 1.0  # gradient norm clipped at clip / K
    weight_decay: float = 1e-5

    def __post_init__(self) -> None:
        _check(self.lr > 0 and math.isfinite(self.lr), "optim.lr", "a finite number > 0", self.lr)
        _check(self.clip > 0, "optim.clip", "> 0", self.clip)
        _check(self.weight_decay >= 0, "optim.weight_decay", ">= 0", self.weight_decay)


@dataclass
class CudaConfig:
    """The training step on a CUDA device (src/atbptt/graphs.py)."""

    # CUDA graphs of the TBPTT step, one per K: null (auto) on a CUDA device for fixed and
    # adaptive runs, falling back to eager steps if a capture fails; true insists; false: off
    graphs: Optional[bool] = None
    graph_cache: int = 4  # graphs kept (least recently used dropped first; adaptive K)
    bf16: bool = False  # the TBPTT forward and loss under bfloat16 autocast (CUDA only)

    def __post_init__(self) -> None:
        _check(self.graph_cache >= 1, "cuda.graph_cache", "an integer >= 1", self.graph_cache)


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    cuda: CudaConfig = field(default_factory=CudaConfig)
    experiment: str = "default"  # label used by aggregation
    # truncation (fixed), starting truncation (adaptive) or mean truncation length (artbp)
    K: int = 15
    delta: float = 0.5  # tolerated relative gradient bias (adaptive)
    seed: int = 0  # initial weights and training randomness
    epochs: float = 20.0  # fractions allowed
    max_time: Optional[float] = None  # stop once train_time exceeds this many seconds
    evals_per_epoch: int = 1
    device: Device = Device.auto
    threads: int = 1  # torch CPU threads per run (sweeps share the cores)
    progress: bool = True
    logger: Logger = Logger.csv  # tensorboard: also write <run dir>/tb/ (metrics.csv stays)
    # keep the weights of the first evaluation at or past each of these epochs in
    # <run dir>/snapshots/epoch_<e>.pt (e.g. to study the estimator on fixed weights)
    snapshot_epochs: List[float] = field(default_factory=list)
    # GiB of memory the run may hold; null: what the machine has available (src/atbptt/memory.py)
    max_memory: Optional[float] = None

    def __post_init__(self) -> None:
        _check(self.K >= 1, "K", "an integer >= 1", self.K)
        _check(0 < self.delta <= 1, "delta", "in (0, 1]", self.delta)
        _check(self.epochs > 0 and math.isfinite(self.epochs), "epochs", "a number > 0",
               self.epochs)
        _check(self.max_time is None or self.max_time > 0, "max_time", "> 0 or null", self.max_time)
        _check(self.evals_per_epoch >= 1, "evals_per_epoch", "an integer >= 1",
               self.evals_per_epoch)
        _check(self.threads >= 1, "threads", "an integer >= 1", self.threads)
        _check(self.max_memory is None or self.max_memory > 0, "max_memory",
               "a number of GiB > 0 or null", self.max_memory)
        for e in self.snapshot_epochs:
            _check(0 <= e <= self.epochs, "snapshot_epochs", f"a list of epochs in [0, epochs "
                   f"({self.epochs})]", list(self.snapshot_epochs))
        if self.method.name == MethodName.artbp:  # c = stride / K < 1 (constant schedule)
            stride, cap = self.method.artbp_stride, self.method.artbp_max_length
            _check(self.K > stride, "K", f"> method.artbp_stride ({stride}) for method=artbp "
                   "(K is the mean truncation length)", self.K)
            _check(cap is None or cap >= self.K, "method.artbp_max_length",
                   f">= K ({self.K}) or null", cap)
            # segments of random length: no graph per K, and the fused backward is float32
            _check(self.cuda.graphs is not True, "cuda.graphs", "null or false for method=artbp",
                   self.cuda.graphs)
            _check(not self.cuda.bf16, "cuda.bf16", "false for method=artbp", self.cuda.bf16)


def register_configs() -> None:
    """Store the schema; ``conf/config.yaml`` extends it through its defaults list."""
    from hydra.core.config_store import ConfigStore  # here: the library imports without Hydra

    ConfigStore.instance().store(name="base_config", node=Config)
