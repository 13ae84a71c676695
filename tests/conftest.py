"""Shared test helpers: one torch thread, tiny configs, the CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ATBPTT_DATA", REPO.parent / "shared" / "data"))

# a copy-task run that takes a second or two
TINY = ["dataset.train_length=400", "dataset.eval_length=100", "dataset.batch_size=8",
        "dataset.eval_batch_size=8", "model.hidden_size=8", "model.embedding_size=8",
        "method.window=20", "method.burn_in=5", "method.num_windows=4", "method.k_max=20",
        "K=5", "evals_per_epoch=2", "epochs=1", "progress=false"]


def run_cli(args, cwd: Path, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``atbptt-run ARGS`` in ``cwd`` with one thread."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "atbptt.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny():
    return list(TINY)


def checked_config(*overrides: str):
    """The config of ``overrides``, composed and checked as the CLI does (``ConfigError``)."""
    from hydra import compose, initialize_config_module

    from atbptt.config import register_configs
    from atbptt.validate import to_config

    register_configs()
    with initialize_config_module(config_module="atbptt.conf", version_base="1.3"):
        return to_config(compose(config_name="config", overrides=list(overrides)))


def tiny_config(*overrides: str):
    """The TINY copy-task config with ``overrides``."""
    return checked_config(*TINY, *overrides)


def run_interrupted(cfg, run_dir: Path, evals: int, monkeypatch) -> None:
    """``atbptt.run.run`` in this process, interrupted (KeyboardInterrupt) right after the
    checkpoint of evaluation number ``evals``: the run directory is left resumable."""
    from atbptt import train
    from atbptt.run import run as run_training

    original = train.Trainer.eval_and_save

    def stop_after(self, *args):
        original(self, *args)
        if self.progress.evals >= evals:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train.Trainer, "eval_and_save", stop_after)
        with pytest.raises(KeyboardInterrupt):
            run_training(cfg, run_dir)


@pytest.fixture
def torch_state():
    """For tests that call ``atbptt.run.run`` in this process: restore the torch settings it
    changes (threads, denormal flushing, the global RNG) afterwards."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)
