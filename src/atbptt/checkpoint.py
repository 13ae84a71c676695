"""What a run's checkpoint holds: ``Progress``, the payload, its estimator state, snapshots.

``checkpoint.pt`` (written atomically by ``rundir.save_checkpoint`` at every evaluation) holds
the config, the model and optimizer states, ``Progress``, the walker, the RNG states, and the
adaptive controller's state; ``payload`` builds it and ``restore_estimator`` restores the
estimator's part, converting checkpoints of earlier versions. ``write_snapshots`` keeps the
weights of the epochs in ``snapshot_epochs``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

from .config import Config
from .controller import AdaptiveTruncation
from .models import RNNModel
from .resume import config_dict
from .rundir import save_checkpoint
from .tbptt import Walker


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


def payload(cfg: Config, model: RNNModel, optimizer: torch.optim.Optimizer, progress: Progress,
            walker: Walker, diagnostic_rng: torch.Generator,
            controller: Optional[AdaptiveTruncation], device: torch.device) -> dict:
    """The checkpoint of a run at an evaluation."""
    return {
        "config": OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True),
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "progress": asdict(progress), "walker": (walker.pos, walker.anchor, walker.state),
        "rng": torch.get_rng_state(), "diagnostic_rng": diagnostic_rng.get_state(),
        "controller": None if controller is None else controller.state_dict(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
    }


def restore_estimator(payload: dict, progress: Progress,
                      controller: Optional[AdaptiveTruncation],
                      diagnostic_rng: torch.Generator, reestimate_steps: Optional[int]) -> None:
    """The controller's schedule and generators; a checkpoint of an earlier version (one
    ``estimator_rng`` for everything, the schedule in ``progress``) is converted."""
    p, ctl = progress, controller
    if "controller" in payload:
        if ctl is not None:
            state = payload["controller"]
            ctl.load_state_dict({**state, "generator": state["generator"].cpu()})
        diagnostic_rng.set_state(payload["diagnostic_rng"].cpu())
        return
    if ctl is None:
        diagnostic_rng.set_state(payload["estimator_rng"].cpu())
    else:
        ctl.generator.set_state(payload["estimator_rng"].cpu())
        ctl.load_state_dict({
            "K": p.K, "seconds": p.estimation_time, "num_estimates_done": 0,
            "since_estimate": (p.steps_since_estimate if reestimate_steps is not None
                               else p.chunks_since_estimate),
            "generator": ctl.generator.get_state()})


def write_snapshots(cfg: Config, run_dir: Path, model: RNNModel, epoch: float, K: int) -> None:
    """``snapshot_epochs``: the weights of the first evaluation at or past each epoch, in
    ``snapshots/epoch_<e>.pt`` (model ``state_dict``, epoch, K; written once, atomically)."""
    for e in cfg.snapshot_epochs:
        path = run_dir / "snapshots" / f"epoch_{e:g}.pt"
        if epoch >= e - 1e-9 and not path.exists():
            path.parent.mkdir(exist_ok=True)
            save_checkpoint(path, {"model": model.state_dict(), "epoch": epoch,
                                   "K": K, "config": config_dict(cfg)})
