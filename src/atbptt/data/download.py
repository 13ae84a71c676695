"""Corpus files: where they are, their published checksums, and fetching the missing ones.

``CORPORA`` lists each corpus's files with their md5 and sha256 (``verify_file`` checks them
before anything is read); ``fetch_missing`` downloads the archives of ``DOWNLOAD_URLS`` (tried
in order), extracts only the files that are missing, checks each one and only then moves it
into place. Every failure the user can fix is a ``DataError`` with a one-line message.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, List, Optional, Tuple

from .streams import DataError

_CHUNK = 1 << 20
_HELP = ("set ATBPTT_DATA (or dataset.data_dir) to a folder holding ptb/ and wikitext-2/")


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

# Archives holding the files above (.tgz or .zip, told apart by content), tried in order.
# The original S3 address of WikiText-2 may no longer serve it; the second is Merity's mirror.
DOWNLOAD_URLS: Dict[str, List[str]] = {
    "ptb": ["http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"],
    "wikitext2": [
        "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
        "https://wikitext.smerity.com/wikitext-2-v1.zip",
    ],
}


# --- files and checksums ---------------------------------------------------------------------

def corpus_spec(name: str) -> _CorpusSpec:
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; allowed: {', '.join(CORPORA)}")
    return CORPORA[name]


def find_files(folder: Path, spec: _CorpusSpec) -> Dict[str, Optional[Path]]:
    """Each split's file under its canonical name, else as ``train.txt``/``valid.txt``/
    ``test.txt``."""
    found: Dict[str, Optional[Path]] = {}
    for split, file in spec.files.items():
        candidates = [folder / file.name, folder / f"{split}.txt"]
        found[split] = next((path for path in candidates if path.is_file()), None)
    return found


def file_hashes(path: Path) -> Tuple[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            md5.update(block)
            sha256.update(block)
    return md5.hexdigest(), sha256.hexdigest()


def verify_file(path: Path, file: _FileSpec) -> str:
    md5, sha256 = file_hashes(path)
    if (md5, sha256) != (file.md5, file.sha256):
        raise DataError(
            f"checksum mismatch for {path}: expected sha256 {file.sha256} (md5 {file.md5}), "
            f"got sha256 {sha256} (md5 {md5}); the file is corrupt or another version: "
            f"delete it (to download it again) or replace it with the original {file.name}")
    return sha256


# --- download ---------------------------------------------------------------------------------

def fetch_missing(name: str, spec: _CorpusSpec, folder: Path, paths: Dict[str, Optional[Path]],
                  download: bool, progress: bool) -> None:
    """Download and extract the files of ``paths`` that are None (missing), from the first
    archive of ``DOWNLOAD_URLS`` that holds them all, checked; else ``DataError``."""
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
            reasons.append(f"{url}: {one_line(err)}")
    raise DataError(f"{where} (download failed: {'; '.join(reasons) or 'no URL configured'})")


def one_line(err: BaseException) -> str:
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
        md5, sha256 = file_hashes(Path(temp))
        if (md5, sha256) != (file.md5, file.sha256):
            raise ValueError(f"{file.member} in the archive has sha256 {sha256}, "
                             f"expected {file.sha256}")
    except BaseException:
        os.unlink(temp)
        raise
    return Path(temp)
