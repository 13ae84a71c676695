"""Limits that span several keys or depend on the data, checked before a run writes anything.

``check_config`` runs on every composed config (``compose_check.to_config``, so before Hydra
starts as well as in each job): every number finite and within 64 bits, seeds >= 0, ``threads``
within the machine's cores, at most ``MAX_LAYERS`` layers, a finite, positive SGD step
``lr * K**lr_power`` for every K the run can use, and for a corpus at least 2 tokens per stream
(``data.check_corpus_streams``, from the token counts of its verified files,
``data.corpus.TOKENS``; checked again once it is read).
``check_data`` runs once the streams are built, before the run directory is locked or written.
Each raises ``ConfigError`` with one line naming the key(s) and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator, Tuple

import torch

from .config import Config, ConfigError, MethodName
from .data import TOKENS, TaskData, check_corpus_streams

INT64 = 2 ** 63  # torch indexes, seeds and counts with 64-bit integers
MAX_LAYERS = 100  # deeper stacks only wait: the paper's models have 1 or 2 layers
# the SGD step and the weight decay reach the float32 weights as float32 scalars
FLOAT32_TINY, FLOAT32_MAX = 1.1754943508222875e-38, 3.4028234663852886e38


def check_config(cfg: Config) -> None:
    """Refuse a config no run can use (the single-key ranges are checked by the schema)."""
    _check_numbers(cfg)
    for key, seed in (("seed", cfg.seed), ("dataset.seed", cfg.dataset.seed)):
        if seed < 0:
            raise ConfigError(f"{key}={seed} is not allowed; {key} must be an integer >= 0")
    cores = os.cpu_count() or 1
    if cfg.threads > cores:
        raise ConfigError(f"threads={cfg.threads} is not allowed; threads must be an integer in "
                          f"[1, {cores}] (the CPU cores of this machine)")
    if cfg.optim.weight_decay > FLOAT32_MAX:
        raise ConfigError(f"optim.weight_decay={cfg.optim.weight_decay!r} is not allowed; "
                          f"optim.weight_decay must be <= {FLOAT32_MAX:.4g} (a float32 number)")
    if cfg.model.num_layers > MAX_LAYERS:
        raise ConfigError(f"model.num_layers={cfg.model.num_layers} is not allowed; "
                          f"model.num_layers must be <= {MAX_LAYERS} (torch builds and runs a "
                          "stack layer by layer, so time grows with depth: 1000 layers of width "
                          "8 take over a minute per chunk on a CPU)")
    _check_step_size(cfg)
    if cfg.dataset.name.value in TOKENS:  # the verified files' token counts are known up front
        check_corpus_streams(cfg.dataset, TOKENS[cfg.dataset.name.value])


def _fields(node, prefix: str = "") -> Iterator[Tuple[str, object]]:
    """(dotted key, value) for every leaf of a config dataclass."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def _check_numbers(cfg: Config) -> None:
    for key, value in _fields(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} is not allowed; {key} must be a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
            raise ConfigError(f"{key}={value} is not allowed; {key} must be an integer of "
                              "64 bits (|value| < 2^63)")


def usable_K(cfg: Config) -> Tuple[int, int]:
    """The smallest and the largest truncation K the run can train with."""
    if cfg.method.name == MethodName.adaptive:  # starts at K, then K_hat within [k_min, k_max]
        return min(cfg.K, cfg.method.k_min), max(cfg.K, cfg.method.k_max)
    return cfg.K, cfg.K


def _check_step_size(cfg: Config) -> None:
    """lr * K**p is monotone in K, so the extreme Ks bound every step the run can take; the
    step must be a normal float32 number (not 0 or inf once it reaches the weights)."""
    lr, p = cfg.optim.lr, cfg.optim.lr_power
    low, high = usable_K(cfg)
    for K in (low, high):
        try:
            step = lr * K ** p
        except OverflowError:
            step = math.inf
        if not FLOAT32_TINY <= step <= FLOAT32_MAX:
            span = f"K={K}" if low == high else f"K in [{low}, {high}]"
            raise ConfigError(
                f"optim.lr={lr!r} with optim.lr_power={p!r} is not allowed; the SGD step "
                f"optim.lr * K^optim.lr_power must be in [{FLOAT32_TINY:.4g}, {FLOAT32_MAX:.4g}] "
                f"(finite and > 0 in float32) for every K this run can use ({span}), and it is "
                f"{step:.4g} at K={K}")


def uses_estimator(cfg: Config) -> bool:
    """Whether the run samples estimation windows (K estimates, logged profiles, the audit)."""
    m = cfg.method
    return m.name == MethodName.adaptive or m.log_estimates > 0 or m.audit


def check_data(cfg: Config, data: TaskData) -> None:
    """Refuse a config that does not fit the data it was given (before anything is written)."""
    m = cfg.method
    if cfg.model.tie_weights and not (data.token_inputs and data.input_size == data.output_size):
        inputs = (f"{data.input_size} input tokens, {data.output_size} output classes"
                  if data.token_inputs else f"vector inputs of size {data.input_size}")
        raise ConfigError(f"model.tie_weights=true is not allowed for dataset={data.name} "
                          f"({inputs}); tied weights need token inputs and outputs over one "
                          "vocabulary: "
                          "use model.tie_weights=false")
    for split in (data.train, data.valid, data.test):
        for values in (split.inputs, split.targets):
            if values.is_floating_point() and not bool(torch.isfinite(values).all()):
                raise ConfigError(f"dataset.noise_std={cfg.dataset.noise_std!r} is not allowed for "
                                  f"dataset={data.name}: the generated data overflow float32 "
                                  "(NaN or inf); use a smaller dataset.noise_std")
    steps = data.train.length
    if uses_estimator(cfg) and m.window + m.burn_in > steps:
        raise ConfigError(
            f"method.window={m.window} with method.burn_in={m.burn_in} is not allowed for these "
            f"training streams of {steps} steps: method.window + method.burn_in must be <= "
            f"{steps} (or lengthen the streams: dataset.train_length, or a smaller "
            "dataset.batch_size for a corpus)")
