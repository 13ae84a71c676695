"""Word-level corpora (PTB, WikiText-2): verified files -> vocabulary -> id streams.

Read by our own code (torchtext is discontinued). Tokenization follows pytorch/examples
``word_language_model``: each line is split on whitespace and gets one ``<eos>``, empty lines
included. The vocabulary covers all three splits in order of first appearance (train, then
valid, then test), so a word has the same id everywhere (NOTES §8 counts: PTB 10,000 types,
WikiText-2 33,278).

``load_corpus`` checks every file against its published checksums before anything else,
downloads missing files from ``DOWNLOAD_URLS`` if allowed, and caches the tokenized corpus
(``torch.save``) under a key made of the files' sha256, so a second load only hashes files.
Every failure the user can fix is a ``DataError`` with a one-line message.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor

SPLITS = ("train", "valid", "test")
EOS = "<eos>"
_CACHE_FORMAT = 1  # bump when the cached layout or the tokenization changes
_CHUNK = 1 << 20
_HELP = ("set ATBPTT_DATA (or dataset.data_dir) to a folder holding ptb/ and wikitext-2/")


class DataError(ValueError):
    """A corpus file is missing, corrupt or cannot be fetched; the message is one line."""


@dataclass(frozen=True)
class _FileSpec:
    name: str  # canonical file name inside the corpus folder
    member: str  # path of the file inside the downloadable archive
    md5: str
    sha256: str


@dataclass(frozen=True)
class _CorpusSpec:
    folder: str  # subfolder of the data directory
    files: Dict[str, _FileSpec]  # split -> file


# Checksums from ../shared/data/README.md (md5) and ../shared/data/SHA256SUMS.
CORPORA: Dict[str, _CorpusSpec] = {
    "ptb": _CorpusSpec("ptb", {
        "train": _FileSpec("ptb.train.txt", "simple-examples/data/ptb.train.txt",
                           "f26c4b92c5fdc7b3f8c7cdcb991d8420",
                           "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
        "valid": _FileSpec("ptb.valid.txt", "simple-examples/data/ptb.valid.txt",
                           "aa0affc06ff7c36e977d7cd49e3839bf",
                           "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
        "test": _FileSpec("ptb.test.txt", "simple-examples/data/ptb.test.txt",
                          "8b80168b89c18661a38ef683c0dc3721",
                          "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
    }),
    "wikitext2": _CorpusSpec("wikitext-2", {
        "train": _FileSpec("wiki.train.tokens", "wikitext-2/wiki.train.tokens",
                           "34a77ebe59551b3a3b3d8c0a2797c976",
                           "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
        "valid": _FileSpec("wiki.valid.tokens", "wikitext-2/wiki.valid.tokens",
                           "d756d22ab2310e7e60c094bea5c5a8eb",
                           "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
        "test": _FileSpec("wiki.test.tokens", "wikitext-2/wiki.test.tokens",
                          "781c9418ab9414bd09e4aad825aae752",
                          "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
    }),
}

# What the verified files hold (checked by tests/test_memory.py when the files are present): the
# vocabulary size and the tokens per split, known before a corpus is read, so that limits that
# depend on them (2 tokens per stream, memory) are checked before anything is loaded or written.
VOCAB_SIZES: Dict[str, int] = {"ptb": 10000, "wikitext2": 33278}
TOKENS: Dict[str, Dict[str, int]] = {
    "ptb": {"train": 929589, "valid": 73760, "test": 82430},
    "wikitext2": {"train": 2088628, "valid": 217646, "test": 245569},
}

# Archives holding the files above (.tgz or .zip, told apart by content), tried in order.
# The original S3 address of WikiText-2 may no longer serve it; the second is Merity's mirror.
DOWNLOAD_URLS: Dict[str, List[str]] = {
    "ptb": ["http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"],
    "wikitext2": [
        "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
        "https://wikitext.smerity.com/wikitext-2-v1.zip",
    ],
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
    spec = _spec(name)
    folder = Path(data_dir) / spec.folder
    paths = _find_files(folder, spec)
    if any(path is None for path in paths.values()):
        _fetch_missing(name, spec, folder, paths, download, progress)
        paths = _find_files(folder, spec)
    checksums = {f"{spec.folder}/{path.name}": _verify(path, spec.files[split])
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
        raise ValueError(f"num_streams={num_streams} must be between 1 and the stream length {ids.numel()}")
    steps = ids.numel() // num_streams
    return ids[: steps * num_streams].view(num_streams, steps).t().contiguous()  # (T, B)


# --- files and checksums ---------------------------------------------------------------------

def _spec(name: str) -> _CorpusSpec:
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; allowed: {', '.join(CORPORA)}")
    return CORPORA[name]


def _find_files(folder: Path, spec: _CorpusSpec) -> Dict[str, Optional[Path]]:
    """Each split's file under its canonical name, else as ``train.txt``/``valid.txt``/``test.txt``."""
    found: Dict[str, Optional[Path]] = {}
    for split, file in spec.files.items():
        candidates = [folder / file.name, folder / f"{split}.txt"]
        found[split] = next((path for path in candidates if path.is_file()), None)
    return found


def _hashes(path: Path) -> Tuple[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            md5.update(block)
            sha256.update(block)
    return md5.hexdigest(), sha256.hexdigest()


def _verify(path: Path, file: _FileSpec) -> str:
    md5, sha256 = _hashes(path)
    if (md5, sha256) != (file.md5, file.sha256):
        raise DataError(
            f"checksum mismatch for {path}: expected sha256 {file.sha256} (md5 {file.md5}), "
            f"got sha256 {sha256} (md5 {md5}); the file is corrupt or another version: "
            f"delete it (to download it again) or replace it with the original {file.name}")
    return sha256


# --- download ---------------------------------------------------------------------------------

def _fetch_missing(name: str, spec: _CorpusSpec, folder: Path, paths: Dict[str, Optional[Path]],
                   download: bool, progress: bool) -> None:
    missing = [split for split, path in paths.items() if path is None]
    names = ", ".join(spec.files[split].name for split in missing)
    where = f"{name}: missing {names} in {folder}; put the files there, or {_HELP}"
    if not download:
        raise DataError(f"{where} (downloading is switched off)")
    reasons = []
    for url in DOWNLOAD_URLS[name]:
        try:
            _download_and_extract(url, folder, [spec.files[split] for split in missing], progress)
            return
        except (OSError, EOFError, ValueError, KeyError, tarfile.TarError, zipfile.BadZipFile,
                zlib.error) as err:
            reasons.append(f"{url}: {_one_line(err)}")
    raise DataError(f"{where} (download failed: {'; '.join(reasons) or 'no URL configured'})")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _download_and_extract(url: str, folder: Path, files: List[_FileSpec], progress: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    staged: List[Path] = []
    try:
        with tempfile.TemporaryFile(dir=folder) as archive, ExitStack() as stack:
            _fetch(url, archive, progress)
            open_member = _member_opener(archive, stack)
            for file in files:
                staged.append(_extract(open_member, file, folder))
        for temp, file in zip(staged, files):  # all files verified: only now move them into place
            os.replace(temp, folder / file.name)
    finally:
        for temp in staged:
            if temp.exists():
                temp.unlink()


def _fetch(url: str, out: BinaryIO, progress: bool) -> None:
    with urllib.request.urlopen(url, timeout=30) as response:
        total = int(response.headers.get("Content-Length") or 0)
        bar = _progress_bar(total, url.rsplit("/", 1)[-1]) if progress else None
        for block in iter(lambda: response.read(_CHUNK), b""):
            out.write(block)
            if bar:
                bar(len(block))
        if bar:
            bar(0, done=True)


def _progress_bar(total: int, label: str):
    """A callback ``(n_bytes, done=False)``: tqdm if installed, else plain lines on stderr."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=f"downloading {label}")
        return lambda n, done=False: bar.close() if done else bar.update(n)
    seen = [0]

    def update(n: int, done: bool = False) -> None:
        seen[0] += n
        shown = f"{seen[0] / 1e6:.1f} MB" + (f" / {total / 1e6:.1f} MB" if total else "")
        sys.stderr.write(f"\rdownloading {label}: {shown}" + ("\n" if done else ""))
        sys.stderr.flush()
    return update


def _member_opener(archive: BinaryIO, stack: ExitStack) -> Callable[[str], BinaryIO]:
    """A function ``member name -> readable binary file`` for a .tgz or .zip archive."""
    archive.seek(0)
    if zipfile.is_zipfile(archive):
        archive.seek(0)
        return stack.enter_context(zipfile.ZipFile(archive)).open
    archive.seek(0)
    tar = stack.enter_context(tarfile.open(fileobj=archive, mode="r:*"))

    def open_member(member: str) -> BinaryIO:
        handle = tar.extractfile(member)  # KeyError if absent
        if handle is None:
            raise KeyError(f"{member} is not a regular file in the archive")
        return handle
    return open_member


def _extract(open_member: Callable[[str], BinaryIO], file: _FileSpec, folder: Path) -> Path:
    """Copy one member to a temp file in ``folder`` and check it; returns the temp path."""
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{file.name}.", suffix=".part")
    try:
        with open_member(file.member) as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
        os.chmod(temp, 0o644)  # mkstemp makes it owner-only; data files are for everyone to read
        md5, sha256 = _hashes(Path(temp))
        if (md5, sha256) != (file.md5, file.sha256):
            raise ValueError(f"{file.member} in the archive has sha256 {sha256}, expected {file.sha256}")
    except BaseException:
        os.unlink(temp)
        raise
    return Path(temp)


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
    """Save atomically (temp file + os.replace); a cache that cannot be written is only a warning."""
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
        warnings.warn(f"could not write the corpus cache {path}: {_one_line(err)}", stacklevel=3)
