"""What every task hands the trainer: time-major splits, and the checks on them.

Every split is time-major: ``inputs`` ``[T, B]`` (tokens) or ``[T, B, D]`` (vectors) and
``targets`` aligned with them, so the loss at time t compares ``out[t]`` with ``targets[t]``.
A word corpus's 1-D token stream becomes such a split by ``batchify`` and ``lm_split``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

from torch import Tensor

from ..config import DatasetConfig
from ..errors import ConfigError, DataError  # noqa: F401  (DataError re-exported)


@dataclass
class Split:
    inputs: Tensor
    targets: Tensor

    @property
    def length(self) -> int:
        return self.inputs.shape[0]

    @property
    def num_streams(self) -> int:
        return self.inputs.shape[1]

    @property
    def tokens(self) -> int:
        return self.length * self.num_streams


@dataclass
class TaskData:
    name: str
    train: Split
    valid: Split
    test: Split
    classification: bool  # cross-entropy (PPL logged) or MSE regression
    input_size: int  # vocabulary size or input dimension
    output_size: int  # classes or output dimension
    token_inputs: bool
    tokens: Dict[str, int]
    info: Dict[str, object] = field(default_factory=dict)  # extra facts for run.json


def make_task(name, train, valid, test, classification, input_size, output_size, token_inputs,
              info) -> TaskData:
    """``TaskData`` whose token counts are those of the splits (steps x streams)."""
    tokens = {"train": train.tokens, "valid": valid.tokens, "test": test.tokens}
    return TaskData(name, train, valid, test, classification, input_size, output_size,
                    token_inputs, tokens, info)


def batchify(ids: Tensor, num_streams: int) -> Tensor:
    """Lay a 1-D stream into ``num_streams`` parallel columns, ``[N // num_streams, num_streams]``.

    The stream is cut into ``num_streams`` contiguous pieces, one per column; the remainder
    (``N % num_streams`` ids at the end) is dropped. Rows are time steps, so row ``t`` holds
    step ``t`` of every stream. For the stream ``a b c ... x`` (24 ids) and 4 streams::

        a b c d e f | g h i j k l | m n o p q r | s t u v w x
        \\_________/   \\_________/   \\_________/   \\_________/
          column 0      column 1      column 2      column 3

            +---------+
         t0 | a g m s |
         t1 | b h n t |
         t2 | c i o u |
         t3 | d j p v |
         t4 | e k q w |
         t5 | f l r x |
            +---------+

    Each column is an independent stream, so the state carried down a column follows the text.
    """
    if ids.dim() != 1:
        raise ValueError(f"batchify needs a 1-D stream, got shape {tuple(ids.shape)}")
    if not 1 <= num_streams <= ids.numel():
        raise ValueError(f"num_streams={num_streams} must be between 1 and the stream length "
                         f"{ids.numel()}")
    steps = ids.numel() // num_streams
    return ids[: steps * num_streams].view(num_streams, steps).t().contiguous()  # (T, B)


def lm_split(ids: Tensor, num_streams: int) -> Split:
    """Lay a token stream into columns and pair each token with the next one."""
    columns = batchify(ids, num_streams)  # (N // num_streams, num_streams)
    return Split(columns[:-1], columns[1:])


def check_corpus_streams(cfg: DatasetConfig, num_tokens: Dict[str, int]) -> None:
    """Each stream of each split needs at least 2 tokens (one input-target step)."""
    for split, tokens in num_tokens.items():
        key = "dataset.batch_size" if split == "train" else "dataset.eval_batch_size"
        streams = cfg.batch_size if split == "train" else cfg.eval_batch_size
        if tokens // streams < 2:
            raise ConfigError(f"{key}={streams} is not allowed for dataset={cfg.name.value}: its "
                              f"{split} split has {tokens} tokens, so {key} must be <= "
                              f"{tokens // 2} (at least 2 tokens per stream)")
