"""Word-level corpora (PTB, WikiText-2): verified files -> vocabulary -> id streams.

Read by our own code (torchtext is discontinued). Tokenization follows pytorch/examples
``word_language_model``: each line is split on whitespace and gets one ``<eos>``, empty lines
included. The vocabulary covers all three splits in order of first appearance (train, then
valid, then test), so a word has the same id everywhere (NOTES §8 counts: PTB 10,000 types,
WikiText-2 33,278).

``load_corpus`` checks every file against its published checksums before anything else,
downloads missing files if allowed (``download``), and caches the tokenized corpus
(``torch.save``) under a key made of the files' sha256, so a second load only hashes files.
Every failure the user can fix is a ``DataError`` with a one-line message.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor

from ..config import DatasetConfig
from .download import corpus_spec, fetch_missing, find_files, one_line, verify_file
from .streams import TaskData, check_corpus_streams, lm_split, make_task

SPLITS = ("train", "valid", "test")
EOS = "<eos>"
_CACHE_FORMAT = 1  # bump when the cached layout or the tokenization changes

# What the verified files hold (checked by tests/test_memory.py when the files are present): the
# vocabulary size and the tokens per split, known before a corpus is read, so that limits that
# depend on them (2 tokens per stream, memory) are checked before anything is loaded or written.
VOCAB_SIZES: Dict[str, int] = {"ptb": 10000, "wikitext2": 33278}
TOKENS: Dict[str, Dict[str, int]] = {
    "ptb": {"train": 929589, "valid": 73760, "test": 82430},
    "wikitext2": {"train": 2088628, "valid": 217646, "test": 245569},
}


@dataclass(eq=False)
class Corpus:
    """A tokenized corpus: ``vocab[id]`` is the word, each split a 1-D ``torch.long`` stream."""

    name: str
    vocab: List[str]
    train: Tensor
    valid: Tensor
    test: Tensor
    checksums: Dict[str, str]  # "ptb/ptb.train.txt" -> sha256
    word_to_id: Dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.word_to_id = {word: i for i, word in enumerate(self.vocab)}

    def __repr__(self) -> str:
        return f"Corpus(name={self.name!r}, vocab_size={self.vocab_size}, tokens={self.num_tokens})"

    @property
    def tokens(self) -> Dict[str, Tensor]:
        return {"train": self.train, "valid": self.valid, "test": self.test}

    @property
    def num_tokens(self) -> Dict[str, int]:
        return {split: int(ids.numel()) for split, ids in self.tokens.items()}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, eos: bool = False) -> Tensor:
        """Ids of the whitespace-separated words of ``text`` (KeyError for unknown words)."""
        words = text.split() + ([EOS] if eos else [])
        return torch.tensor([self.word_to_id[w] for w in words], dtype=torch.long)

    def decode(self, ids: Union[Tensor, Iterable[int]]) -> str:
        return " ".join(self.vocab[i] for i in torch.as_tensor(ids).reshape(-1).tolist())


def resolve_data_dir(data_dir: Optional[str], default: Path) -> Path:
    """``data_dir`` if given, else ``$ATBPTT_DATA``, else ``default``."""
    chosen = data_dir or os.environ.get("ATBPTT_DATA") or default
    return Path(chosen).expanduser()


def default_cache_dir() -> Path:
    return Path(os.environ.get("ATBPTT_CACHE") or Path.home() / ".cache" / "atbptt").expanduser()


def load_corpus(name: str, data_dir: Path, cache_dir: Optional[Path] = None,
                download: bool = True, progress: bool = True) -> Corpus:
    """Verify (downloading missing files if ``download``), then tokenize or reuse the cache."""
    spec = corpus_spec(name)
    folder = Path(data_dir) / spec.folder
    paths = find_files(folder, spec)
    if any(path is None for path in paths.values()):
        fetch_missing(name, spec, folder, paths, download, progress)
        paths = find_files(folder, spec)
    checksums = {f"{spec.folder}/{path.name}": verify_file(path, spec.files[split])
                 for split, path in paths.items()}
    cache_file = _cache_path(name, checksums, cache_dir or default_cache_dir())
    corpus = _read_cache(cache_file, name, checksums)
    if corpus is None:
        vocab, ids = tokenize([paths[split] for split in SPLITS])
        corpus = Corpus(name, vocab, *ids, checksums=checksums)
        _write_cache(cache_file, corpus)
    return corpus


def tokenize(paths: List[Path]) -> Tuple[List[str], List[Tensor]]:
    """Whitespace words plus one ``<eos>`` per line; ids by first appearance over ``paths``."""
    word_to_id: Dict[str, int] = {}
    streams = []
    for path in paths:
        ids: List[int] = []
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                # setdefault evaluates len() before inserting: a new word gets the next id
                ids.extend(word_to_id.setdefault(w, len(word_to_id)) for w in line.split())
                ids.append(word_to_id.setdefault(EOS, len(word_to_id)))
        streams.append(torch.tensor(ids, dtype=torch.long))
    return list(word_to_id), streams


def make_corpus(cfg: DatasetConfig, default_data_dir: Path, cache_dir: Optional[Path],
                progress: bool) -> TaskData:
    """The LM task of a corpus: ``cfg.batch_size`` training streams, ``cfg.eval_batch_size``
    evaluation streams, each token paired with the next."""
    data_dir = resolve_data_dir(cfg.data_dir, default_data_dir)
    offline = os.environ.get("ATBPTT_OFFLINE", "") not in ("", "0")  # never try to download
    corpus = load_corpus(cfg.name.value, data_dir, cache_dir=cache_dir, download=not offline,
                         progress=progress)
    check_corpus_streams(cfg, corpus.num_tokens)  # before batchify: at least 2 tokens per stream
    train = lm_split(corpus.train, cfg.batch_size)
    valid = lm_split(corpus.valid, cfg.eval_batch_size)
    test = lm_split(corpus.test, cfg.eval_batch_size)
    data = make_task(cfg.name.value, train, valid, test, True, corpus.vocab_size,
                     corpus.vocab_size, True,
                     {"vocab_size": corpus.vocab_size, "data_dir": str(data_dir)})
    data.tokens = dict(corpus.num_tokens)  # the corpus counts (NOTES §8), not the batchified ones
    return data


# --- cache ------------------------------------------------------------------------------------

def _cache_path(name: str, checksums: Dict[str, str], cache_dir: Path) -> Path:
    key = hashlib.sha256(f"{_CACHE_FORMAT}:{name}:{sorted(checksums.items())}".encode()).hexdigest()
    return Path(cache_dir) / f"{name}-{key[:20]}.pt"


def _read_cache(path: Path, name: str, checksums: Dict[str, str]) -> Optional[Corpus]:
    """The cached corpus, or None if absent, unreadable or not for these files."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["format"] != _CACHE_FORMAT or saved["checksums"] != checksums:
            return None
        ids = [saved[split] for split in SPLITS]
        if not all(isinstance(t, Tensor) and t.dtype == torch.long and t.dim() == 1 for t in ids):
            return None
        return Corpus(name, list(saved["vocab"]), *ids, checksums=checksums)
    except Exception:  # corrupt or foreign file: rebuild it
        return None


def _write_cache(path: Path, corpus: Corpus) -> None:
    """Save atomically (temp file + os.replace); a cache that cannot be written is only a
    warning."""
    saved = {"format": _CACHE_FORMAT, "vocab": corpus.vocab, "checksums": corpus.checksums,
             **corpus.tokens}
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(saved, f)
        os.replace(temp, path)
    except OSError as err:
        if temp is not None and os.path.exists(temp):
            os.unlink(temp)
        warnings.warn(f"could not write the corpus cache {path}: {one_line(err)}", stacklevel=3)
