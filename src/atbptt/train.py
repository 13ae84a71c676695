"""The training loop: TBPTT chunks, evaluations, K (re-)estimation, checkpoints, logs.

``Trainer`` trains one model into a run directory, checkpointing at every evaluation (written
atomically). ``run(cfg, run_dir)`` (the lifecycle around it, in ``run.py``) trains or resumes
one run and returns its final status; a finished run is left as it is.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from . import adaptive, artbp, graphs, tensorboard_log
from .config import Config, ConfigError, Device, LogFrom, Logger, MethodName
from .controller import AdaptiveTruncation
from .data import TaskData, load_task  # noqa: F401 - train.load_task, as before
from .limits import uses_estimator
from .metrics import DELTAS, MetricsWriter, write_profile
from .models import ModelSpec, RNNModel, state_to
from .resume import config_dict as _config_dict
from .rundir import CHECKPOINT, save_checkpoint
from .tbptt import Walker, chunk_forward, evaluate, last_step_loss, sequence_loss

DIVERGENCE_CHECK_EVERY = 20  # chunks between finite-loss checks (avoids a GPU sync per chunk)
PROGRESS_EVERY = 60.0  # seconds between progress lines between evaluations
ESTIMATOR_SEED = 7919  # the estimator's windows are seeded by seed + this (the weights by seed)


class Diverged(RuntimeError):
    pass


def resolve_device(choice: Device) -> torch.device:
    if choice == Device.cuda and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is available; use device=auto or device=cpu")
    if choice == Device.cpu or (choice == Device.auto and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def build_model(cfg: Config, data: TaskData, device: torch.device) -> RNNModel:
    """Initial weights depend on ``seed`` alone: the same for every method and K."""
    m = cfg.model
    spec = ModelSpec(m.cell, data.input_size, data.output_size, data.token_inputs, m.hidden_size,
                     m.num_layers, m.embedding_size, m.dropout, m.tie_weights, m.init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = RNNModel(spec)
    return model.to(device)


def build_controller(cfg: Config, data: TaskData, model: RNNModel, loss_fn,
                     device: torch.device) -> AdaptiveTruncation:
    """The run's estimator and adaptive schedule (``method.*``; NOTES §3 steps 6–7): K0 = K,
    updates every ``method.reestimate_steps`` time steps (else ``method.reestimate_every``
    chunks) or ``method.reestimate_seconds`` of training, windows seeded by ``seed``."""
    m = cfg.method
    k_max = m.k_max if cfg.method.name == MethodName.adaptive else min(m.k_max, m.window)
    return AdaptiveTruncation(
        model, data.train.inputs, data.train.targets, loss_fn, delta=cfg.delta, K0=cfg.K,
        window=m.window, burn_in=m.burn_in, num_windows=m.num_windows,
        num_estimates=m.num_estimates, k_min=min(m.k_min, k_max), k_max=k_max,
        reestimate_every=m.reestimate_steps if m.reestimate_steps is not None else m.reestimate_every,
        reestimate_seconds=m.reestimate_seconds, beta_method=m.beta_method, tau=m.tau,
        grad_norm_bound=m.grad_norm_bound, average=m.average, lag0=m.lag0,
        profile_dropout=m.profile_dropout, device=device, seed=cfg.seed + ESTIMATOR_SEED,
        batch_estimates=m.batch_estimates)


@dataclass
class Progress:
    """Everything a checkpoint restores besides model, optimizer and RNG states."""

    K: int
    epoch: int = 0
    step: int = 0  # training chunks (optimizer steps)
    tokens: int = 0  # training tokens consumed (new steps x streams)
    train_time: float = 0.0
    wall_time: float = 0.0
    estimation_time: float = 0.0  # choosing K (adaptive): part of train_time
    diagnostic_time: float = 0.0  # logged estimates, audit, ARTBP variance: not training time
    evals: int = 0  # rows written to metrics.csv
    # checkpoints of earlier versions kept the adaptive schedule here; it now lives in the
    # controller's state (checkpoint key "controller"), and these are read only to resume those
    chunks_since_estimate: int = 0
    steps_since_estimate: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    estimate: Optional[dict] = None  # last K estimate (arrays as lists), for logging
    done: bool = False
    # ARTBP segment lengths since the last evaluation (steps): sum, count, max
    segment_sum: int = 0
    segment_count: int = 0
    segment_max: int = 0

    def fraction(self, pos: int, length: int) -> float:
        return self.epoch + pos / length


@dataclass
class Trainer:
    cfg: Config
    run_dir: Path
    data: TaskData
    model: RNNModel
    device: torch.device
    optimizer: torch.optim.Optimizer = field(init=False)
    progress: Progress = field(init=False)
    walker: Walker = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.progress = Progress(K=cfg.K)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr(cfg.K),
                                         weight_decay=cfg.optim.weight_decay)
        self.walker = Walker.start(self.model, self.data.train.num_streams, self.device)
        self.loss_fn = sequence_loss(self.data.classification)
        self.window_loss = last_step_loss(self.data.classification)
        # the adaptive schedule (K0, updates, averaging) is the public controller's; fixed-K
        # and ARTBP runs use its estimator for their logged estimates only (never step it)
        self.controller = (build_controller(cfg, self.data, self.model, self.window_loss,
                                            self.device) if uses_estimator(cfg) else None)
        # with method.log_from=fresh, diagnostics (logged estimates, audit, ARTBP variance)
        # never draw the windows that choose K: they get their own generator. With
        # log_from=chosen they share the estimator's, as this project's runs always did (so
        # those runs reproduce); fixed-K and ARTBP runs have no K to choose
        if self.adaptive and cfg.method.log_from == LogFrom.fresh:
            self.diagnostic_rng = torch.Generator().manual_seed(cfg.seed + 104729)
        elif self.controller is not None:
            self.diagnostic_rng = self.controller.generator
        else:
            self.diagnostic_rng = torch.Generator().manual_seed(cfg.seed + ESTIMATOR_SEED)
        self.metrics = MetricsWriter(self.run_dir / "metrics.csv")
        self.tensorboard: Optional[tensorboard_log.TensorBoardLog] = None
        if cfg.logger == Logger.tensorboard:
            tensorboard_log.require()
        self.schedule = (artbp.Schedule.from_config(cfg) if cfg.method.name == MethodName.artbp
                         else None)
        # CUDA graphs of the TBPTT step (cuda.graphs; None: every step eager, as on the CPU)
        self.graphs = graphs.build(cfg, self.model, self.device, self.loss_fn, self.lr)

    # ------------------------------------------------------------------ K and the step size
    def lr(self, K: int) -> float:
        return self.cfg.optim.lr * K ** self.cfg.optim.lr_power

    def set_K(self, K: int) -> None:
        self.progress.K = K
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(K)

    # ---------------------------------------------------------------------- one chunk
    def train_chunk(self) -> torch.Tensor:
        cfg = self.cfg
        self.model.train()
        graphed = (self.graphs.step(self.data.train, self.walker, self.progress.K)
                   if self.graphs is not None else None)
        if graphed is not None:  # the whole step replayed (forward to SGD step)
            return self._count(*graphed)
        self.optimizer.zero_grad(set_to_none=True)
        if self.schedule is not None:  # ARTBP: a segment of random length, K its mean
            loss, steps = artbp.next_segment(self.model, self.data.train, self.walker,
                                             self.schedule, self.loss_fn, self.device,
                                             fused=cfg.method.artbp_fused)
            self.record_segment(steps)
        else:
            with graphs.autocast(self.device, cfg.cuda.bf16):
                loss, steps = chunk_forward(self.model, self.data.train, self.walker,
                                            self.progress.K, cfg.method.style, self.loss_fn,
                                            self.device)
        loss.backward()
        # NOTES §4: clip at clip / K, step lr * K^p
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip / self.progress.K)
        self.optimizer.step()
        return self._count(loss, steps)

    def _count(self, loss: torch.Tensor, steps: int) -> torch.Tensor:
        """Count a finished training step of ``steps`` new time steps; its loss, detached."""
        p = self.progress
        p.step += 1
        p.tokens += steps * self.data.train.num_streams
        self.last_steps = steps
        return loss.detach()

    def record_segment(self, steps: int) -> None:
        p = self.progress
        p.segment_sum += steps
        p.segment_count += 1
        p.segment_max = max(p.segment_max, steps)

    # --------------------------------------------------------------------- estimation
    @property
    def adaptive(self) -> bool:
        return self.cfg.method.name == MethodName.adaptive

    def _diverged_or_raise(self, err: ValueError) -> None:
        """A NaN profile: the last steps may have diverged unchecked (Diverged); else re-raise."""
        if all(torch.isfinite(w).all() for w in self.model.parameters()):
            raise err
        raise Diverged("the weights became NaN or inf (seen by the K estimator)") from err

    def update_K(self, steps: int, seconds: float) -> None:
        """Adaptive method: tell the controller what the last update consumed (time steps, or
        one chunk with ``method.reestimate_steps`` unset; its training seconds); when it
        updates K, take the new K and its learning rate (the estimate's time is training time)."""
        if not self.adaptive:
            return
        ctl, m = self.controller, self.cfg.method
        try:
            updated = ctl.step(steps if m.reestimate_steps is not None else 1, seconds)
        except ValueError as err:
            self._diverged_or_raise(err)
        if updated:
            self.progress.estimation_time += ctl.estimate.seconds
            self.progress.estimate = _estimate_record(ctl.estimate, self.cfg.delta)
            self.set_K(ctl.K)

    # --------------------------------------------------------------------- evaluation
    def log_estimate(self) -> Optional[dict]:
        """The estimate shown in the logs: with ``method.log_from=chosen`` an adaptive run's
        latest K update (before the first, fresh ones); otherwise the mean of
        ``method.log_estimates`` fresh estimates (diagnostic: their time is
        ``diagnostic_time``, not training time)."""
        p, m = self.progress, self.cfg.method
        if self.adaptive and m.log_from == LogFrom.chosen and p.estimate is not None:
            return p.estimate
        if m.log_estimates == 0:
            return None
        try:
            est = self.controller.fresh_estimate(m.log_estimates, self.diagnostic_rng)
        except ValueError as err:
            self._diverged_or_raise(err)
        p.diagnostic_time += est.seconds
        return _estimate_record(est, self.cfg.delta)

    def audit(self) -> Optional[float]:
        m = self.cfg.method
        if not m.audit or self.schedule is not None:  # ARTBP's bias is zero (its variance is logged)
            return None
        t0 = time.perf_counter()
        bias = audit_bias(self.model, self.data.train, self.cfg, self.progress.K, self.window_loss,
                          self.diagnostic_rng, self.device)
        self.progress.diagnostic_time += time.perf_counter() - t0
        return bias

    def evaluate_row(self, train_loss: Optional[float]) -> Dict[str, object]:
        p, data = self.progress, self.data
        chunk = self.cfg.dataset.eval_chunk
        valid = evaluate(self.model, data.valid, chunk, self.loss_fn, self.device)
        test = evaluate(self.model, data.test, chunk, self.loss_fn, self.device)
        # a non-finite loss ends the run as diverged (eval_and_save); no profile to estimate from
        est = self.log_estimate() if math.isfinite(valid) and math.isfinite(test) else None
        row = {"eval": p.evals, "epoch": round(self.fraction(), 6), "step": p.step,
               "tokens": p.tokens, "train_loss": train_loss, "valid_loss": valid, "test_loss": test,
               "K": p.K, "lr": self.lr(p.K), "true_rel_bias": self.audit()}
        if data.classification:
            row.update(valid_ppl=_ppl(valid), test_ppl=_ppl(test))
        if self.schedule is not None:
            row.update(self.artbp_row())
        if est is not None:
            rel = est["rel_bias"]
            row.update(beta_hat=est["beta_hat"], delta_hat=rel[min(p.K, len(rel)) - 1],
                       **{f"K_hat_{d}": est["K_hat"][d] for d in DELTAS})
            for bound, alt in est["by_bound"].items():  # both stand-ins, same profiles
                rel = alt["rel_bias"]
                row[f"delta_hat_{bound}"] = rel[min(p.K, len(rel)) - 1]
                row.update({f"K_hat_{d}_{bound}": alt["K_hat"][d] for d in DELTAS})
            write_profile(self.run_dir / "profiles" / f"eval_{p.evals:05d}.csv",
                          np.asarray(est["phi"]), np.asarray(est["cum"]), np.asarray(est["tail"]),
                          est["beta_hat"], est["tau"])
        return row

    def artbp_row(self) -> Dict[str, object]:
        """Segment lengths since the last evaluation (then reset) and the gradient's relative
        variance on fresh estimation windows (diagnostic: estimation time, not training time)."""
        p, m = self.progress, self.cfg.method
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

    def fraction(self) -> float:
        return self.progress.fraction(self.walker.pos, self.data.train.length)

    # -------------------------------------------------------------------- checkpoints
    def save(self) -> None:
        p = self.progress
        payload = {
            "config": OmegaConf.to_container(OmegaConf.structured(self.cfg), enum_to_str=True),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "progress": asdict(p), "walker": (self.walker.pos, self.walker.anchor, self.walker.state),
            "rng": torch.get_rng_state(), "diagnostic_rng": self.diagnostic_rng.get_state(),
            "controller": None if self.controller is None else self.controller.state_dict(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }
        save_checkpoint(self.run_dir / CHECKPOINT, payload)  # atomic

    def load(self, payload: dict) -> None:
        """Restore a checkpoint loaded onto the CPU (``rundir.load_checkpoint``), whichever
        device wrote it: tensors move to this run's device, RNG states stay CPU tensors, and
        the CUDA RNG states are restored only where both runs have CUDA."""
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.progress = Progress(**payload["progress"])
        pos, anchor, state = payload["walker"]
        self.walker = Walker(pos, anchor, state_to(state, self.device))
        torch.set_rng_state(payload["rng"].cpu())
        self._load_estimator_state(payload)
        if payload["cuda_rng"] is not None and self.device.type == "cuda":
            for index, cuda_state in enumerate(payload["cuda_rng"][:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state.cpu(), index)
        self.set_K(self.progress.K)

    def _load_estimator_state(self, payload: dict) -> None:
        """The controller's schedule and generators; a checkpoint of an earlier version (one
        ``estimator_rng`` for everything, the schedule in ``progress``) is converted."""
        p, ctl = self.progress, self.controller
        if "controller" in payload:
            if ctl is not None:
                state = payload["controller"]
                ctl.load_state_dict({**state, "generator": state["generator"].cpu()})
            self.diagnostic_rng.set_state(payload["diagnostic_rng"].cpu())
            return
        if ctl is None:
            self.diagnostic_rng.set_state(payload["estimator_rng"].cpu())
        else:
            ctl.generator.set_state(payload["estimator_rng"].cpu())
            ctl.load_state_dict({
                "K": p.K, "seconds": p.estimation_time, "num_estimates_done": 0,
                "since_estimate": (p.steps_since_estimate if self.cfg.method.reestimate_steps
                                   is not None else p.chunks_since_estimate),
                "generator": ctl.generator.get_state()})

    # ----------------------------------------------------------------------- the loop
    def fit(self) -> None:
        """Train until the epoch or time budget is spent, evaluating ``evals_per_epoch`` times
        per epoch (and once before training); checkpoint after every evaluation.

        ``train_time`` is the wall clock between evaluations (training chunks and, for the
        adaptive method, K estimation); on CUDA the device is synchronized only at evaluations."""
        cfg, p, length = self.cfg, self.progress, self.data.train.length
        session_start, wall_base = time.perf_counter(), p.wall_time
        if p.evals == 0:
            self.eval_and_save(None, wall_base)
        loss_acc = torch.zeros((), device=self.device)
        chunks, segment_start, last_print = 0, time.perf_counter(), time.perf_counter()
        while not p.done:
            if self.walker.pos >= length:  # new epoch: fresh state, from the start
                p.epoch += 1
                self.walker = Walker.start(self.model, self.data.train.num_streams, self.device)
            chunk_start = time.perf_counter()
            loss_acc += self.train_chunk()
            self.update_K(self.last_steps, time.perf_counter() - chunk_start)
            chunks += 1
            if chunks % DIVERGENCE_CHECK_EVERY == 0:
                _check_finite(loss_acc)
            now = time.perf_counter()
            p.done = (self.fraction() >= cfg.epochs - 1e-9 or
                      (cfg.max_time is not None and p.train_time + now - segment_start >= cfg.max_time))
            if p.done or self.fraction() >= p.evals / cfg.evals_per_epoch - 1e-9:
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                p.train_time += time.perf_counter() - segment_start
                train_loss = _check_finite(loss_acc) / chunks
                loss_acc.zero_()
                chunks = 0
                self.eval_and_save(train_loss, wall_base + time.perf_counter() - session_start)
                self._print_progress(train_loss)
                segment_start = last_print = time.perf_counter()
            elif cfg.progress and now - last_print > PROGRESS_EVERY:
                self._print_running(float(loss_acc) / chunks, p.train_time + now - segment_start)
                last_print = now

    def eval_and_save(self, train_loss: Optional[float], wall_time: float) -> None:
        p = self.progress
        row = self.evaluate_row(train_loss)
        p.wall_time = wall_time
        row.update(train_time=p.train_time, wall_time=wall_time, estimation_time=p.estimation_time,
                   diagnostic_time=p.diagnostic_time)
        self.metrics.append(row)
        self.sync_tensorboard()
        self.last_row = row
        _check_eval_finite(row)
        p.evals += 1
        self.save()
        self.snapshot()

    def snapshot(self) -> None:
        """``snapshot_epochs``: the weights of the first evaluation at or past each epoch, in
        ``snapshots/epoch_<e>.pt`` (model ``state_dict``, epoch, K; written once, atomically)."""
        for e in self.cfg.snapshot_epochs:
            path = self.run_dir / "snapshots" / f"epoch_{e:g}.pt"
            if self.fraction() >= e - 1e-9 and not path.exists():
                path.parent.mkdir(exist_ok=True)
                save_checkpoint(path, {"model": self.model.state_dict(), "epoch": self.fraction(),
                                       "K": self.progress.K, "config": _config_dict(self.cfg)})

    def sync_tensorboard(self) -> None:
        """``logger=tensorboard``: copy the new metrics.csv row (and its profile) to tb/; the
        first call of a process rebuilds tb/ from the CSVs, so a resumed run's is complete."""
        if self.cfg.logger != Logger.tensorboard:
            return
        if self.tensorboard is None:
            self.tensorboard = tensorboard_log.TensorBoardLog(self.run_dir)
        self.tensorboard.sync()
        if self.progress.done:
            self.tensorboard.close()

    def _print_running(self, train_loss: float, train_time: float) -> None:
        p = self.progress
        print(f"epoch {self.fraction():7.3f} | step {p.step:6d} | train loss {train_loss:.4f} | "
              f"K {p.K:4d} | {p.tokens / max(train_time, 1e-9):9.0f} tok/s | {train_time:7.1f} s",
              flush=True)

    def _print_progress(self, train_loss: float) -> None:
        if not self.cfg.progress:
            return
        p, valid = self.progress, self.last_row["valid_loss"]
        rate = p.tokens / max(p.train_time, 1e-9)
        metric = f"valid ppl {_ppl(valid):9.3f}" if self.data.classification else f"valid loss {valid:.5f}"
        print(f"epoch {self.fraction():7.3f} | step {p.step:6d} | train loss {train_loss:.4f} | "
              f"{metric} | K {p.K:4d} | {rate:9.0f} tok/s | {p.train_time:7.1f} s", flush=True)


def _check_finite(loss_acc: torch.Tensor) -> float:
    value = float(loss_acc)
    if not math.isfinite(value):
        raise Diverged(f"training loss became {value}")
    return value


def _check_eval_finite(row: Dict[str, object]) -> None:
    """A NaN or inf valid or test loss ends the run as diverged (after its row is logged)."""
    for split in ("valid", "test"):
        value = row[f"{split}_loss"]
        if not math.isfinite(value):
            raise Diverged(f"{split} loss became {value} at evaluation {row['eval']}")


def _ppl(loss: float) -> float:
    if not math.isfinite(loss):
        return math.nan  # a diverged evaluation: NaN, not a perplexity of inf
    return math.exp(loss) if loss < 700 else math.inf


def _estimate_record(est: "adaptive.Estimate", delta: float) -> dict:
    """Plain-Python copy of an estimate (checkpointable), with K_hat(delta) for the run's delta."""
    return {"phi": np.asarray(est.phi).tolist(), "cum": np.asarray(est.cum).tolist(),
            "tail": np.asarray(est.tail).tolist(), "rel_bias": np.asarray(est.rel_bias).tolist(),
            "beta_hat": float(est.beta_hat), "tau": int(est.tau),
            "K_hat": {d: int(est.K_hat[d]) for d in DELTAS}, "K_chosen": int(est.K_hat[delta]),
            "by_bound": {b.value: {"rel_bias": np.asarray(rel).tolist(),
                                   "K_hat": {d: int(k[d]) for d in DELTAS}}
                         for b, (rel, k) in est.by_bound.items()}}


@contextlib.contextmanager
def _eval_windows(model: RNNModel, split, cfg: Config, generator, device):
    """Fresh estimation windows in eval mode: yields ``(x, y, state)``, the ``window`` steps
    of ``num_windows`` windows and their state after a ``burn_in`` run without gradient."""
    m = cfg.method
    was_training = model.training
    model.eval()
    try:
        x, y = adaptive.sample_windows(split.inputs, split.targets, m.burn_in + m.window,
                                       m.num_windows, generator)
        x, y = x.to(device), y.to(device)
        state = model.init_state(m.num_windows, device)
        if m.burn_in > 0:
            with torch.no_grad():
                _, state = model.recur(x[:m.burn_in], state)
        yield x[m.burn_in:], y[m.burn_in:], state
    finally:
        model.train(was_training)


def audit_bias(model: RNNModel, split, cfg: Config, K: int, loss_fn, generator, device) -> float:
    """True relative bias of TBPTT(K) on fresh estimation windows (``method.audit``)."""
    with _eval_windows(model, split, cfg, generator, device) as (x, y, state):
        return adaptive.true_relative_bias(model, x, y, state, loss_fn, min(K, cfg.method.window))


def artbp_variance(model: RNNModel, split, cfg: Config, schedule: "artbp.Schedule", loss_fn,
                   generator, device) -> float:
    """ARTBP's gradient relative variance (``artbp.relative_variance``) on fresh estimation
    windows: ``num_windows`` windows of ``window`` steps after a ``burn_in``, eval mode."""
    with _eval_windows(model, split, cfg, generator, device) as (x, y, state):
        return artbp.relative_variance(model, x, y, state, loss_fn, schedule,
                                       cfg.method.artbp_draws, generator)


# ---------------------------------------------------------------------------- one run
def run(cfg: Config, run_dir: Path, default_data_dir: Path = Path("data"),
        cache_dir: Optional[Path] = None, on_start: Optional[Callable[[], None]] = None) -> str:
    """``run.run``: a run's lifecycle (accept, lock, start or resume, train, record the end)."""
    from .run import run as run_lifecycle

    return run_lifecycle(cfg, run_dir, default_data_dir, cache_dir, on_start)
