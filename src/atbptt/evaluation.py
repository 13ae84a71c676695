"""One evaluation of a run: the row ``metrics.csv`` gets, and its diagnostics.

``Evaluator`` computes the row: the valid and test losses (perplexities for a language model),
K and the step size, the logged estimate (β̂, δ̂ of the K in use, K̂(δ) under both stand-ins;
its profile goes to ``profiles/eval_<n>.csv``), the true relative bias (``method.audit``) and,
for ARTBP, the segment lengths and the gradient's relative variance. The diagnostics draw their
windows from the run's diagnostic generator (``diagnostic_generator``) and count as
``diagnostic_time``, not training time. ``Diverged`` ends a run whose weights or losses are no
longer finite.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

from . import artbp
from .adapters import sample_windows
from .config import Config, LogFrom, MethodName
from .controller import AdaptiveTruncation
from .data import TaskData
from .errors import Diverged
from .metrics import DELTAS, write_profile
from .models import RNNModel
from .profile import true_relative_bias
from .tbptt import evaluate

ESTIMATOR_SEED = 7919  # the estimator's windows are seeded by seed + this (the weights by seed)
FRESH_SEED = 104729  # method.log_from=fresh: the diagnostics' windows, seeded by seed + this


def diverged_or_raise(model: RNNModel, err: ValueError) -> None:
    """A NaN profile: the last steps may have diverged unchecked (Diverged); else re-raise."""
    if all(torch.isfinite(w).all() for w in model.parameters()):
        raise err
    raise Diverged("the weights became NaN or inf (seen by the K estimator)") from err


def diagnostic_generator(cfg: Config,
                         controller: Optional[AdaptiveTruncation]) -> torch.Generator:
    """The generator of the diagnostics' windows (logged estimates, audit, ARTBP variance).

    With ``method.log_from=fresh`` an adaptive run's diagnostics never draw the windows that
    choose K: they get their own generator. With ``log_from=chosen`` they share the
    estimator's, as this project's runs always did (so those runs reproduce); fixed-K and
    ARTBP runs have no K to choose."""
    if cfg.method.name == MethodName.adaptive and cfg.method.log_from == LogFrom.fresh:
        return torch.Generator().manual_seed(cfg.seed + FRESH_SEED)
    if controller is not None:
        return controller.generator
    return torch.Generator().manual_seed(cfg.seed + ESTIMATOR_SEED)


@dataclass
class Evaluator:
    """Computes a run's evaluation rows; ``progress`` (the trainer's ``Progress``) is passed
    to each call, which adds the diagnostics' time to it (and resets ARTBP's segment counts)."""

    cfg: Config
    run_dir: Path
    data: TaskData
    model: RNNModel
    device: torch.device
    loss_fn: Callable  # the training loss of a chunk (evaluation)
    window_loss: Callable  # the last-step loss of a window (estimates, audit, variance)
    controller: Optional[AdaptiveTruncation]
    diagnostic_rng: torch.Generator
    schedule: Optional[artbp.Schedule]

    def row(self, progress, epoch: float, lr: float,
            train_loss: Optional[float]) -> Dict[str, object]:
        """The row of evaluation ``progress.evals`` at ``epoch``, with the step size ``lr``."""
        p, data = progress, self.data
        chunk = self.cfg.dataset.eval_chunk
        valid = evaluate(self.model, data.valid, chunk, self.loss_fn, self.device)
        test = evaluate(self.model, data.test, chunk, self.loss_fn, self.device)
        # a non-finite loss ends the run as diverged (eval_and_save); no profile to estimate from
        est = self.log_estimate(p) if math.isfinite(valid) and math.isfinite(test) else None
        row = {"eval": p.evals, "epoch": round(epoch, 6), "step": p.step,
               "tokens": p.tokens, "train_loss": train_loss, "valid_loss": valid,
               "test_loss": test, "K": p.K, "lr": lr, "true_rel_bias": self.audit(p)}
        if data.classification:
            row.update(valid_ppl=perplexity(valid), test_ppl=perplexity(test))
        if self.schedule is not None:
            row.update(self.artbp_row(p))
        if est is not None:
            rel = est["rel_bias"]
            row.update(beta_hat=est["beta_hat"], delta_hat=rel[min(p.K, len(rel)) - 1],
                       **{f"K_hat_{d}": est["K_hat"][d] for d in DELTAS})
            for bound, alt in est["by_bound"].items():  # both stand-ins, same profiles
                rel = alt["rel_bias"]
                row[f"delta_hat_{bound}"] = rel[min(p.K, len(rel)) - 1]
                row.update({f"K_hat_{d}_{bound}": alt["K_hat"][d] for d in DELTAS})
            write_profile(self.run_dir / "profiles" / f"eval_{p.evals:05d}.csv",
                          np.asarray(est["phi"]), np.asarray(est["cum"]),
                          np.asarray(est["tail"]), est["beta_hat"], est["tau"])
        return row

    def log_estimate(self, progress) -> Optional[dict]:
        """The estimate shown in the logs: with ``method.log_from=chosen`` an adaptive run's
        latest K update (before the first, fresh ones); otherwise the mean of
        ``method.log_estimates`` fresh estimates (diagnostic: their time is
        ``diagnostic_time``, not training time)."""
        p, m = progress, self.cfg.method
        adaptive = m.name == MethodName.adaptive
        if adaptive and m.log_from == LogFrom.chosen and p.estimate is not None:
            return p.estimate
        if m.log_estimates == 0:
            return None
        try:
            est = self.controller.fresh_estimate(m.log_estimates, self.diagnostic_rng)
        except ValueError as err:
            diverged_or_raise(self.model, err)
        p.diagnostic_time += est.seconds
        return estimate_record(est, self.cfg.delta)

    def audit(self, progress) -> Optional[float]:
        """``method.audit``: the true relative bias of TBPTT(K) (none for ARTBP, unbiased)."""
        if not self.cfg.method.audit or self.schedule is not None:  # ARTBP: variance logged
            return None
        t0 = time.perf_counter()
        bias = audit_bias(self.model, self.data.train, self.cfg, progress.K, self.window_loss,
                          self.diagnostic_rng, self.device)
        progress.diagnostic_time += time.perf_counter() - t0
        return bias

    def artbp_row(self, progress) -> Dict[str, object]:
        """Segment lengths since the last evaluation (then reset) and the gradient's relative
        variance on fresh estimation windows (diagnostic: estimation time, not training time)."""
        p, m = progress, self.cfg.method
        row: Dict[str, object] = {"trunc_mean": p.segment_sum / p.segment_count
                                  if p.segment_count else None,
                                  "trunc_max": p.segment_max if p.segment_count else None}
        p.segment_sum = p.segment_count = p.segment_max = 0
        if m.artbp_draws > 0:
            t0 = time.perf_counter()
            row["grad_rel_var"] = artbp_variance(self.model, self.data.train, self.cfg,
                                                 self.schedule, self.window_loss,
                                                 self.diagnostic_rng, self.device)
            p.diagnostic_time += time.perf_counter() - t0
        return row


def check_eval_finite(row: Dict[str, object]) -> None:
    """A NaN or inf valid or test loss ends the run as diverged (after its row is logged)."""
    for split in ("valid", "test"):
        value = row[f"{split}_loss"]
        if not math.isfinite(value):
            raise Diverged(f"{split} loss became {value} at evaluation {row['eval']}")


def perplexity(loss: float) -> float:
    if not math.isfinite(loss):
        return math.nan  # a diverged evaluation: NaN, not a perplexity of inf
    return math.exp(loss) if loss < 700 else math.inf


def estimate_record(est, delta: float) -> dict:
    """Plain-Python copy of an ``adaptive.Estimate`` (checkpointable), with K_hat(delta) for the
    run's delta."""
    return {"phi": np.asarray(est.phi).tolist(), "cum": np.asarray(est.cum).tolist(),
            "tail": np.asarray(est.tail).tolist(), "rel_bias": np.asarray(est.rel_bias).tolist(),
            "beta_hat": float(est.beta_hat), "tau": int(est.tau),
            "K_hat": {d: int(est.K_hat[d]) for d in DELTAS}, "K_chosen": int(est.K_hat[delta]),
            "by_bound": {b.value: {"rel_bias": np.asarray(rel).tolist(),
                                   "K_hat": {d: int(k[d]) for d in DELTAS}}
                         for b, (rel, k) in est.by_bound.items()}}


@contextlib.contextmanager
def eval_windows(model: RNNModel, split, cfg: Config, generator, device):
    """Fresh estimation windows in eval mode: yields ``(x, y, state)``, the ``window`` steps
    of ``num_windows`` windows and their state after a ``burn_in`` run without gradient."""
    m = cfg.method
    was_training = model.training
    model.eval()
    try:
        x, y = sample_windows(split.inputs, split.targets, m.burn_in + m.window,
                              m.num_windows, generator)
        x, y = x.to(device), y.to(device)
        state = model.init_state(m.num_windows, device)
        if m.burn_in > 0:
            with torch.no_grad():
                _, state = model.recur(x[:m.burn_in], state)
        yield x[m.burn_in:], y[m.burn_in:], state
    finally:
        model.train(was_training)


def audit_bias(model: RNNModel, split, cfg: Config, K: int, loss_fn, generator,
               device) -> float:
    """True relative bias of TBPTT(K) on fresh estimation windows (``method.audit``)."""
    with eval_windows(model, split, cfg, generator, device) as (x, y, state):
        return true_relative_bias(model, x, y, state, loss_fn, min(K, cfg.method.window))


def artbp_variance(model: RNNModel, split, cfg: Config, schedule: "artbp.Schedule", loss_fn,
                   generator, device) -> float:
    """ARTBP's gradient relative variance (``artbp.relative_variance``) on fresh estimation
    windows: ``num_windows`` windows of ``window`` steps after a ``burn_in``, eval mode."""
    with eval_windows(model, split, cfg, generator, device) as (x, y, state):
        return artbp.relative_variance(model, x, y, state, loss_fn, schedule,
                                       cfg.method.artbp_draws, generator)
