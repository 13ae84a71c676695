"""The training loop: TBPTT chunks, K and the step size, evaluations, checkpoints, logs.

``Trainer`` trains one model into a run directory, checkpointing at every evaluation (written
atomically; what a checkpoint holds is ``checkpoint.py``). Each evaluation's row and its
diagnostics are computed by an ``evaluation.Evaluator`` the trainer owns. The lifecycle
around it (accept, lock, start or resume, record how it ended) is ``run.run``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import artbp, checkpoint, graphs, tensorboard_log
from .checkpoint import Progress
from .config import Config, ConfigError, Device, Logger, MethodName
from .controller import AdaptiveTruncation
from .data import TaskData, load_task
from .evaluation import (ESTIMATOR_SEED, Diverged, Evaluator, check_eval_finite,
                         diagnostic_generator, diverged_or_raise, estimate_record)
from .evaluation import perplexity as _ppl
from .limits import uses_estimator
from .metrics import MetricsWriter
from .models import ModelSpec, RNNModel, state_to
from .rundir import CHECKPOINT, save_checkpoint
from .tbptt import Walker, chunk_forward, last_step_loss, sequence_loss

__all__ = ["Diverged", "Progress", "Trainer", "build_controller", "build_model", "load_task",
           "resolve_device"]

DIVERGENCE_CHECK_EVERY = 20  # chunks between finite-loss checks (avoids a GPU sync per chunk)
PROGRESS_EVERY = 60.0  # seconds between progress lines between evaluations


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
        reestimate_every=(m.reestimate_steps if m.reestimate_steps is not None
                          else m.reestimate_every),
        reestimate_seconds=m.reestimate_seconds, beta_method=m.beta_method, tau=m.tau,
        grad_norm_bound=m.grad_norm_bound, average=m.average, lag0=m.lag0,
        profile_dropout=m.profile_dropout, device=device, seed=cfg.seed + ESTIMATOR_SEED,
        batch_estimates=m.batch_estimates)


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
        # logged estimates, audit, ARTBP variance: their own windows (evaluation.py)
        self.diagnostic_rng = diagnostic_generator(cfg, self.controller)
        self.metrics = MetricsWriter(self.run_dir / "metrics.csv")
        self.tensorboard: Optional[tensorboard_log.TensorBoardLog] = None
        if cfg.logger == Logger.tensorboard:
            tensorboard_log.require()
        self.schedule = (artbp.Schedule.from_config(cfg) if cfg.method.name == MethodName.artbp
                         else None)
        self.evaluator = Evaluator(cfg, self.run_dir, self.data, self.model, self.device,
                                   self.loss_fn, self.window_loss, self.controller,
                                   self.diagnostic_rng, self.schedule)
        self.last_steps = 0  # new time steps of the last training step
        self.last_row: Optional[dict] = None  # the last evaluation's row
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
    def update_K(self, steps: int, seconds: float) -> None:
        """Adaptive method: tell the controller what the last update consumed (time steps, or
        one chunk with ``method.reestimate_steps`` unset; its training seconds); when it
        updates K, take the new K and its learning rate (the estimate's time is training time)."""
        if self.cfg.method.name != MethodName.adaptive:
            return
        ctl, m = self.controller, self.cfg.method
        try:
            updated = ctl.step(steps if m.reestimate_steps is not None else 1, seconds)
        except ValueError as err:
            diverged_or_raise(self.model, err)
        if updated:
            self.progress.estimation_time += ctl.estimate.seconds
            self.progress.estimate = estimate_record(ctl.estimate, self.cfg.delta)
            self.set_K(ctl.K)

    def fraction(self) -> float:
        return self.progress.fraction(self.walker.pos, self.data.train.length)

    # -------------------------------------------------------------------- checkpoints
    def save(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT, checkpoint.payload(  # atomic
            self.cfg, self.model, self.optimizer, self.progress, self.walker,
            self.diagnostic_rng, self.controller, self.device))

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
        checkpoint.restore_estimator(payload, self.progress, self.controller,
                                     self.diagnostic_rng, self.cfg.method.reestimate_steps)
        if payload["cuda_rng"] is not None and self.device.type == "cuda":
            for index, cuda_state in enumerate(payload["cuda_rng"][:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state.cpu(), index)
        self.set_K(self.progress.K)

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
            p.done = (self.fraction() >= cfg.epochs - 1e-9
                      or (cfg.max_time is not None
                          and p.train_time + now - segment_start >= cfg.max_time))
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
        """Evaluate, append the row to metrics.csv (and tb/), checkpoint, snapshot; a
        non-finite valid or test loss raises Diverged after its row is logged."""
        p = self.progress
        row = self.evaluator.row(p, self.fraction(), self.lr(p.K), train_loss)
        p.wall_time = wall_time
        row.update(train_time=p.train_time, wall_time=wall_time, estimation_time=p.estimation_time,
                   diagnostic_time=p.diagnostic_time)
        self.metrics.append(row)
        self.sync_tensorboard()
        self.last_row = row
        check_eval_finite(row)
        p.evals += 1
        self.save()
        checkpoint.write_snapshots(self.cfg, self.run_dir, self.model, self.fraction(), p.K)

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
        metric = (f"valid ppl {_ppl(valid):9.3f}" if self.data.classification
                  else f"valid loss {valid:.5f}")
        print(f"epoch {self.fraction():7.3f} | step {p.step:6d} | train loss {train_loss:.4f} | "
              f"{metric} | K {p.K:4d} | {rate:9.0f} tok/s | {p.train_time:7.1f} s", flush=True)


def _check_finite(loss_acc: torch.Tensor) -> float:
    value = float(loss_acc)
    if not math.isfinite(value):
        raise Diverged(f"training loss became {value}")
    return value
