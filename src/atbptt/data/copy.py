"""The copy task (NOTES §5): our generator, the paper's own data, and the best attainable
perplexity of either.

The generator is seeded by ``dataset.seed``; the paper's data ships with the package and is
checked against its published SHA-256 before use.
"""
from __future__ import annotations

import hashlib
import math
from importlib import resources
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from ..config import ConfigError, DatasetConfig, DatasetName
from .streams import DataError, Split, TaskData, make_task

BLANK, START = 0, 1


# ---------------------------------------------------------------------------- copy task
def copy_streams(length: int, num_streams: int, m_min: int, m_max: int, num_symbols: int,
                 rng: np.random.Generator) -> Split:
    """Copy task (NOTES §5). Each segment: m input symbols (start marker 1, then m-1 content
    symbols 2..num_symbols-1) followed by m blanks; the target emits the m symbols during the
    blanks, so ``targets[t] = inputs[t - m]`` inside a segment's output half::

        inputs   1 3 5 2 0 0 0 0 1 4 2 0 0 0 ...
        targets  0 0 0 0 1 3 5 2 0 0 0 1 4 2 ...

    Segments are laid back to back per stream, which starts at a random phase."""
    inputs = np.zeros((length, num_streams), dtype=np.int64)
    targets = np.zeros((length, num_streams), dtype=np.int64)
    for b in range(num_streams):
        stream_in, stream_out = [], []
        total, goal = 0, length + 2 * m_max
        while total < goal:
            m = int(rng.integers(m_min, m_max + 1))
            seg = rng.integers(2, num_symbols, size=m)
            seg[0] = START
            stream_in += [seg, np.zeros(m, dtype=np.int64)]
            stream_out += [np.zeros(m, dtype=np.int64), seg]
            total += 2 * m
        shift = int(rng.integers(0, 2 * m_max))
        inputs[:, b] = np.concatenate(stream_in)[shift:shift + length]
        targets[:, b] = np.concatenate(stream_out)[shift:shift + length]
    return Split(torch.from_numpy(inputs), torch.from_numpy(targets))


def make_copy(cfg: DatasetConfig) -> TaskData:
    rng = np.random.default_rng(cfg.seed)
    args = (cfg.m_min, cfg.m_max, cfg.num_symbols, rng)
    train = copy_streams(cfg.train_length, cfg.batch_size, *args)
    valid = copy_streams(cfg.eval_length, cfg.eval_batch_size, *args)
    test = copy_streams(cfg.eval_length, cfg.eval_batch_size, *args)
    info = {"vocab_size": cfg.num_symbols, "m_min": cfg.m_min, "m_max": cfg.m_max,
            "ppl_floor": copy_floor_info(train, valid, test, cfg.m_min, cfg.m_max)}
    return make_task(cfg.name.value, train, valid, test, True, cfg.num_symbols, cfg.num_symbols,
                     True, info)


# ------------------------------------------------------------- the paper's copy data
PAPER_COPY_FOLDER = "copy-aicher2019"
# file name and SHA-256 of the published data, converted to NumPy (data/copy-aicher2019/README.md)
PAPER_COPY_FILES = {
    DatasetName.copy_paper: (
        "copy_fixed.npz", "0cf949194709f0e37f97b35cb6bcd15d04c5b9c11b04f90c6a05d8850e6cf510"),
    DatasetName.copy_variable_paper: (
        "copy_variable.npz", "9f52a62cd911a344e9bb25a521298e73b1aece7edeff7428de5e6b9f80e353a2"),
}


def paper_copy_path(name: DatasetName, data_dir: Optional[str] = None) -> Path:
    """``<data_dir>/copy-aicher2019/<file>`` if ``data_dir`` is given, else the copy shipped
    with the package (``data/copy-aicher2019/`` of the repository)."""
    file_name = PAPER_COPY_FILES[name][0]
    if data_dir is not None:
        return Path(data_dir).expanduser() / PAPER_COPY_FOLDER / file_name
    return Path(str(resources.files("atbptt.paper_data") / file_name))


def load_paper_copy(name: DatasetName, data_dir: Optional[str] = None) -> Dict[str, np.ndarray]:
    """The arrays of the paper's copy data (``[T, 64]`` int64 symbol ids per split), after
    checking the file's SHA-256. Raises ``DataError`` (one line naming the file) if it is
    missing, corrupt or not the published data."""
    path = paper_copy_path(name, data_dir)
    expected = PAPER_COPY_FILES[name][1]
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the paper's copy data ({err.strerror or err}); "
                        f"it ships in the repository's data/{PAPER_COPY_FOLDER}/") from None
    if hashlib.sha256(blob).hexdigest() != expected:
        raise DataError(f"{path}: SHA-256 does not match the published data (corrupt or "
                        f"modified copy); restore it from data/{PAPER_COPY_FOLDER}/ of the "
                        "repository")
    with np.load(path) as archive:
        return {key: archive[key].astype(np.int64) for key in archive.files}


def _paper_split(arrays: Dict[str, np.ndarray], split: str, length: int, streams: int,
                 name: str) -> Split:
    """The first ``length`` steps of the first ``streams`` streams of one split."""
    inputs, targets = arrays[f"{split}_inputs"], arrays[f"{split}_targets"]
    T, B = inputs.shape
    keys = (("train_length", "batch_size") if split == "train"
            else ("eval_length", "eval_batch_size"))
    for key, value, most in zip(keys, (length, streams), (T, B)):
        if value > most:
            raise ConfigError(f"dataset.{key}={value} is not allowed with dataset={name}: its "
                              f"{split} split has {T} steps x {B} streams; use at most {most}")
    return Split(torch.from_numpy(inputs[:length, :streams].copy()),
                 torch.from_numpy(targets[:length, :streams].copy()))


def make_paper_copy(cfg: DatasetConfig) -> TaskData:
    """The paper's copy data (NOTES §5). Full size by default (train 4000 x 64, valid/test
    1000 x 64); smaller ``train_length``/``batch_size``/``eval_*`` take a leading part."""
    arrays = load_paper_copy(cfg.name, cfg.data_dir)
    name = cfg.name.value
    train = _paper_split(arrays, "train", cfg.train_length, cfg.batch_size, name)
    valid = _paper_split(arrays, "valid", cfg.eval_length, cfg.eval_batch_size, name)
    test = _paper_split(arrays, "test", cfg.eval_length, cfg.eval_batch_size, name)
    info = {"vocab_size": cfg.num_symbols, "m_min": cfg.m_min, "m_max": cfg.m_max,
            "data_file": str(paper_copy_path(cfg.name, cfg.data_dir)),
            "data_sha256": PAPER_COPY_FILES[cfg.name][1],
            "ppl_floor": copy_floor_info(train, valid, test, cfg.m_min, cfg.m_max)}
    return make_task(name, train, valid, test, True, cfg.num_symbols, cfg.num_symbols, True, info)


# ------------------------------------------------------------ best attainable perplexity
def copy_rule_predictions(inputs: np.ndarray, m_min: int, m_max: int) -> np.ndarray:
    """What the copy rule (NOTES §5) says each target must be, from the input history alone;
    -1 where the history does not determine it. ``inputs``: ``[T, B]`` symbol ids.

    The rule, at time t of a stream (inputs x_1..x_t):
    - x_t is not blank (an input half): the target is blank;
    - x_t is the j-th blank after a run of non-blank inputs x_s..x_e: if that run starts with
      the start marker it is a whole segment of length m = e − s + 1, and the target is
      x_{s+j−1} for j ≤ m, blank after; if the run was cut off by the stream's start (no
      start marker) and m is fixed (m_min = m_max), the target is x_{e−m+j} when that step
      is in the stream, else undetermined; with variable m it is undetermined;
    - blanks with no run before them in the stream: undetermined."""
    T, B = inputs.shape
    pred = np.full((T, B), -1, dtype=np.int64)
    for b in range(B):
        x = inputs[:, b]
        run_start = run_end = -1  # the last run of non-blank inputs, 0-based, inclusive
        j = 0
        for t in range(T):
            if x[t] != BLANK:
                if j > 0 or run_end != t - 1:  # a new run starts here
                    run_start = t
                run_end, j = t, 0
                pred[t, b] = BLANK
                continue
            j += 1
            if run_end < 0:
                continue
            if x[run_start] == START:
                m = run_end - run_start + 1
                pred[t, b] = x[run_start + j - 1] if j <= m else BLANK
            elif m_min == m_max:
                source = run_end - m_min + j
                if j > m_min:
                    pred[t, b] = BLANK
                elif source >= 0:
                    pred[t, b] = x[source]
    return pred


def copy_floor(inputs: np.ndarray, targets: np.ndarray, m_min: int, m_max: int) -> Dict[str, float]:
    """Share of targets the input history does not determine, and the perplexity floor it implies.

    A target is undetermined if ``copy_rule_predictions`` gives none, or gives another symbol
    (the data breaks the rule there: nothing in the history predicts it). The floor is the
    perplexity of an oracle that predicts every determined target with certainty and, at the
    undetermined ones, the empirical distribution of their symbols:
    ``exp(share · H)``, H the entropy (nats) of that distribution. No model can go below it on
    this split, and one that cannot tell which targets are undetermined stays above it."""
    pred = copy_rule_predictions(np.asarray(inputs), m_min, m_max)
    targets = np.asarray(targets)
    undetermined = pred != targets
    share = float(undetermined.mean())
    symbols = targets[undetermined]
    if symbols.size:
        p = np.bincount(symbols) / symbols.size
        p = p[p > 0]
        entropy = float(-(p * np.log(p)).sum())
    else:
        entropy = 0.0
    return {"undetermined_share": share, "undetermined_entropy": entropy,
            "ppl_floor": math.exp(share * entropy)}


def copy_floor_info(train: Split, valid: Split, test: Split, m_min: int,
                    m_max: int) -> Dict[str, dict]:
    """``copy_floor`` of each split (recorded in run.json as ``ppl_floor``)."""
    return {name: copy_floor(split.inputs.numpy(), split.targets.numpy(), m_min, m_max)
            for name, split in (("train", train), ("valid", valid), ("test", test))}
