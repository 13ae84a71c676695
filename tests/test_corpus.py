"""Word corpora against the verified copies in ../shared/data (NOTES §8 counts)."""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from atbptt.data import DataError, batchify, load_corpus, resolve_data_dir
from atbptt.data import corpus as corpus_module
from atbptt.data import download

DATA = Path(os.environ.get("ATBPTT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PTB_FILES = ["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"]
WIKI_FILES = ["wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"]
UNREACHABLE = "http://127.0.0.1:9/unreachable/archive.tgz"

needs_ptb = pytest.mark.skipif(
    not all((DATA / "ptb" / f).is_file() for f in PTB_FILES),
    reason=f"verified PTB copies not found in {DATA / 'ptb'} (set ATBPTT_DATA)")
needs_wiki = pytest.mark.skipif(
    not all((DATA / "wikitext-2" / f).is_file() for f in WIKI_FILES),
    reason=f"verified WikiText-2 copies not found in {DATA / 'wikitext-2'} (set ATBPTT_DATA)")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpus-cache")


@pytest.fixture(scope="session")
def ptb(cache_dir):
    if not all((DATA / "ptb" / f).is_file() for f in PTB_FILES):
        pytest.skip(f"verified PTB copies not found in {DATA / 'ptb'} (set ATBPTT_DATA)")
    return load_corpus("ptb", DATA, cache_dir, download=False, progress=False)


@pytest.fixture(scope="session")
def wikitext2(cache_dir):
    if not all((DATA / "wikitext-2" / f).is_file() for f in WIKI_FILES):
        pytest.skip(f"verified WikiText-2 copies not found in {DATA / 'wikitext-2'} "
                    "(set ATBPTT_DATA)")
    return load_corpus("wikitext2", DATA, cache_dir, download=False, progress=False)


def _assert_same(a, b) -> None:
    assert a.vocab == b.vocab
    for split in ("train", "valid", "test"):
        assert torch.equal(a.tokens[split], b.tokens[split])


# --- counts and vocabulary (NOTES §8) -----------------------------------------------------------

def test_ptb_counts(ptb):
    assert ptb.num_tokens == {"train": 929_589, "valid": 73_760, "test": 82_430}
    assert ptb.vocab_size == 10_000
    for ids in ptb.tokens.values():
        assert ids.dtype == torch.long and ids.dim() == 1
        assert 0 <= int(ids.min()) and int(ids.max()) < ptb.vocab_size
    assert set(ptb.checksums) == {f"ptb/{f}" for f in PTB_FILES}


def test_wikitext2_counts(wikitext2):
    assert wikitext2.num_tokens == {"train": 2_088_628, "valid": 217_646, "test": 245_569}
    assert wikitext2.vocab_size == 33_278


def test_same_word_same_id_in_every_split(ptb, wikitext2):
    for corpus, words in ((ptb, ["the", "<unk>", "<eos>", "market"]),
                          (wikitext2, ["the", "<unk>", "<eos>", "="])):
        for word in words:
            word_id = corpus.word_to_id[word]
            assert corpus.vocab[word_id] == word
            for ids in corpus.tokens.values():
                assert bool((ids == word_id).any())
    # first appearance order: the first line of ptb.train.txt is the first ids
    first_line = (DATA / "ptb" / "ptb.train.txt").read_text().splitlines()[0]
    n = len(first_line.split()) + 1
    assert ptb.train[:n].tolist() == list(range(n))


@pytest.mark.parametrize("split, line_no", [("valid", 0), ("test", 5)])
def test_decode_encode_round_trips_a_line(ptb, split, line_no):
    line = (DATA / "ptb" / f"ptb.{split}.txt").read_text().splitlines()[line_no]
    ids = ptb.encode(line, eos=True)
    assert ptb.decode(ids) == " ".join(line.split() + ["<eos>"])
    # the stream holds exactly these ids at this line's position
    lines = (DATA / "ptb" / f"ptb.{split}.txt").read_text().splitlines()
    start = sum(len(l.split()) + 1 for l in lines[:line_no])
    assert torch.equal(ptb.tokens[split][start:start + len(ids)], ids)


# --- errors -------------------------------------------------------------------------------------

def test_unknown_name_lists_allowed():
    with pytest.raises(DataError, match="allowed: ptb, wikitext2"):
        load_corpus("ptb3", DATA)


def _assert_missing_message(err: DataError, folder: Path) -> None:
    message = str(err)
    assert "\n" not in message
    for name in PTB_FILES:
        assert name in message
    assert str(folder) in message
    assert "ATBPTT_DATA" in message and "dataset.data_dir" in message


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DataError) as err:
        load_corpus("ptb", tmp_path / "nowhere", tmp_path / "cache", download=False)
    _assert_missing_message(err.value, tmp_path / "nowhere" / "ptb")


def test_missing_files_download_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setitem(download.DOWNLOAD_URLS, "ptb", [UNREACHABLE])
    with pytest.raises(DataError) as err:
        load_corpus("ptb", tmp_path / "data", tmp_path / "cache", download=True, progress=False)
    _assert_missing_message(err.value, tmp_path / "data" / "ptb")
    assert "download failed" in str(err.value) and UNREACHABLE in str(err.value)
    assert not list((tmp_path / "data" / "ptb").iterdir())  # no partial files left behind


def test_unwritable_data_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(download.DOWNLOAD_URLS, "ptb", [UNREACHABLE])
    blocker = tmp_path / "a-file"  # a folder cannot be created under a file, even by root
    blocker.write_text("")
    with pytest.raises(DataError) as err:
        load_corpus("ptb", blocker, tmp_path / "cache", progress=False)
    _assert_missing_message(err.value, blocker / "ptb")


@needs_ptb
def test_corrupt_file_fails_checksum(tmp_path):
    folder = tmp_path / "ptb"
    shutil.copytree(DATA / "ptb", folder)
    target = folder / "ptb.valid.txt"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[1000] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        load_corpus("ptb", tmp_path, tmp_path / "cache", download=False)
    message = str(err.value)
    spec = download.CORPORA["ptb"].files["valid"]
    assert str(target) in message and spec.sha256 in message and "delete" in message
    assert download.file_hashes(target)[1] in message
    assert "\n" not in message


# --- cache --------------------------------------------------------------------------------------

@needs_ptb
def test_cache_is_reused(ptb, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    load_corpus("ptb", DATA, cache, download=False)
    assert len(list(cache.glob("*.pt"))) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenizer called although the corpus is cached")
    monkeypatch.setattr(corpus_module, "tokenize", no_tokenizing)
    _assert_same(load_corpus("ptb", DATA, cache, download=False), ptb)


@needs_ptb
def test_corrupt_cache_is_rebuilt(ptb, tmp_path):
    cache = tmp_path / "cache"
    load_corpus("ptb", DATA, cache, download=False)
    (cache_file,) = cache.glob("*.pt")
    cache_file.write_bytes(b"not a torch file")
    _assert_same(load_corpus("ptb", DATA, cache, download=False), ptb)
    assert torch.load(cache_file, weights_only=True)["vocab"] == ptb.vocab  # rewritten


@needs_ptb
def test_generic_file_names(ptb, tmp_path, cache_dir):
    folder = tmp_path / "ptb"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copyfile(DATA / "ptb" / f"ptb.{split}.txt", folder / f"{split}.txt")
    _assert_same(load_corpus("ptb", tmp_path, cache_dir, download=False), ptb)


# --- download -----------------------------------------------------------------------------------

@needs_ptb
def test_download_tgz_end_to_end(ptb, tmp_path, monkeypatch, capsys):
    archive = tmp_path / "simple-examples.tgz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for name in PTB_FILES:
            tar.add(DATA / "ptb" / name, arcname=f"simple-examples/data/{name}")
    monkeypatch.setitem(download.DOWNLOAD_URLS, "ptb", [UNREACHABLE, archive.as_uri()])
    monkeypatch.setitem(__import__("sys").modules, "tqdm", None)  # the plain stderr progress
    data = tmp_path / "data"
    corpus = load_corpus("ptb", data, tmp_path / "cache", download=True, progress=True)
    _assert_same(corpus, ptb)
    assert sorted(p.name for p in (data / "ptb").iterdir()) == sorted(PTB_FILES)
    assert "downloading simple-examples.tgz" in capsys.readouterr().err


@needs_wiki
def test_download_zip_end_to_end(wikitext2, tmp_path, monkeypatch, cache_dir):
    archive = tmp_path / "wikitext-2-v1.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for name in WIKI_FILES:
            zf.write(DATA / "wikitext-2" / name, arcname=f"wikitext-2/{name}")
    monkeypatch.setitem(download.DOWNLOAD_URLS, "wikitext2", [archive.as_uri()])
    data = tmp_path / "data"
    (data / "wikitext-2").mkdir(parents=True)
    shutil.copyfile(DATA / "wikitext-2" / "wiki.train.tokens",
                    data / "wikitext-2" / "wiki.train.tokens")
    corpus = load_corpus("wikitext2", data, cache_dir, download=True, progress=False)  # cached
    _assert_same(corpus, wikitext2)
    assert sorted(p.name for p in (data / "wikitext-2").iterdir()) == sorted(WIKI_FILES)


@needs_ptb
def test_download_with_wrong_content_is_rejected(tmp_path, monkeypatch):
    archive = tmp_path / "bad.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in PTB_FILES:
            info = tarfile.TarInfo(f"simple-examples/data/{name}")
            info.size = 5
            tar.addfile(info, io.BytesIO(b"wrong"))
    monkeypatch.setitem(download.DOWNLOAD_URLS, "ptb", [archive.as_uri()])
    with pytest.raises(DataError, match="download failed.*expected"):
        load_corpus("ptb", tmp_path / "data", tmp_path / "cache", progress=False)
    assert not list((tmp_path / "data" / "ptb").iterdir())


# --- helpers ------------------------------------------------------------------------------------

def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ATBPTT_DATA", "/from/env")
    assert resolve_data_dir("/given", tmp_path) == Path("/given")
    assert resolve_data_dir(None, tmp_path) == Path("/from/env")
    monkeypatch.delenv("ATBPTT_DATA")
    assert resolve_data_dir(None, tmp_path) == tmp_path


def test_batchify_layout():
    ids = torch.arange(26)
    out = batchify(ids, 4)
    assert out.shape == (6, 4)  # the last 26 % 4 = 2 ids are dropped
    assert out[:, 0].tolist() == [0, 1, 2, 3, 4, 5]  # column 0: the first piece of the stream
    assert out[0].tolist() == [0, 6, 12, 18]  # row t: step t of every stream
    assert torch.equal(out.t().reshape(-1), ids[:24])
    assert out.is_contiguous()
    with pytest.raises(ValueError):
        batchify(ids, 0)
    with pytest.raises(ValueError):
        batchify(ids.view(2, 13), 2)
