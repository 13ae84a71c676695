"""The data of every task: time-major train/valid/test streams for TBPTT.

- ``streams``: ``Split``, ``TaskData``, ``batchify``/``lm_split``, the check that a corpus has
  2 tokens per stream, ``DataError``;
- ``copy``: the copy task (NOTES §5): our generator, the paper's own data, the best attainable
  perplexity;
- ``systems``: a linear state-space model and a VAR(p) process;
- ``corpus``: PTB and WikiText-2, read, tokenized and cached;
- ``download``: the corpus files' checksums, and fetching the missing ones.

``load_task(cfg)`` builds the streams of ``cfg.name``. Nothing here imports the trainer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import DatasetConfig, DatasetName
from .copy import (BLANK, PAPER_COPY_FILES, START, copy_floor, copy_rule_predictions,
                   copy_streams, load_paper_copy, make_copy, make_paper_copy, paper_copy_path)
from .corpus import (EOS, SPLITS, TOKENS, VOCAB_SIZES, Corpus, default_cache_dir, load_corpus,
                     make_corpus, resolve_data_dir, tokenize)
from .download import CORPORA, DOWNLOAD_URLS
from .streams import DataError, Split, TaskData, batchify, check_corpus_streams, lm_split
from .systems import make_linear, make_var

__all__ = [
    "BLANK", "CORPORA", "Corpus", "DOWNLOAD_URLS", "DataError", "EOS", "PAPER_COPY_FILES",
    "SPLITS", "START", "Split", "TOKENS", "TaskData", "VOCAB_SIZES", "batchify",
    "check_corpus_streams", "copy_floor", "copy_rule_predictions", "copy_streams",
    "default_cache_dir", "lm_split", "load_corpus", "load_paper_copy", "load_task",
    "paper_copy_path", "resolve_data_dir", "tokenize",
]


def load_task(cfg: DatasetConfig, default_data_dir: Path = Path("data"),
              cache_dir: Optional[Path] = None, progress: bool = True) -> TaskData:
    """Build the train/valid/test streams of ``cfg.name``."""
    if cfg.name in (DatasetName.copy, DatasetName.copy_variable):
        return make_copy(cfg)
    if cfg.name in PAPER_COPY_FILES:
        return make_paper_copy(cfg)
    if cfg.name == DatasetName.linear:
        return make_linear(cfg)
    if cfg.name == DatasetName.var:
        return make_var(cfg)
    return make_corpus(cfg, default_data_dir, cache_dir, progress)
