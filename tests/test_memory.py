"""The memory a run will hold, estimated before anything is built (memory.py), and the refusal
of a run that cannot fit; the corpus sizes it and the stream limit rely on."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atbptt import memory
from atbptt.config import ConfigError
from atbptt.data import TOKENS, VOCAB_SIZES, load_corpus, load_task
from atbptt.models import num_params
from atbptt.train import build_model
from conftest import SHARED_DATA, tiny_config

SYNTHETIC = ["copy", "copy_variable", "linear", "var", "copy_paper"]


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(dataset=st.sampled_from(SYNTHETIC), cell=st.sampled_from(["lstm", "gru", "srnn"]),
       hidden=st.integers(1, 24), layers=st.integers(1, 3), embedding=st.integers(1, 24),
       tie=st.booleans())
def test_the_parameter_count_is_the_built_models(dataset, cell, hidden, layers, embedding, tie):
    tie = tie and dataset.startswith("copy")
    if tie:
        embedding = hidden
    cfg = tiny_config(f"dataset={dataset}", f"model={cell}", f"model.hidden_size={hidden}",
                      f"model.num_layers={layers}", f"model.embedding_size={embedding}",
                      f"model.tie_weights={str(tie).lower()}", "dataset.train_length=40",
                      "method.log_estimates=0")
    model = build_model(cfg, load_task(cfg.dataset), torch.device("cpu"))
    assert memory.parameters(cfg) == num_params(model)


KEYS = {"K": (1, 5000), "dataset.batch_size": (1, 4096), "model.hidden_size": (1, 4096),
        "method.num_windows": (1, 10 ** 6), "dataset.train_length": (30, 10 ** 7),
        "dataset.eval_chunk": (1, 10 ** 6)}


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(key=st.sampled_from(sorted(KEYS)), data=st.data(), limit=st.floats(1e-4, 64.0))
def test_a_run_is_refused_exactly_when_its_estimate_exceeds_max_memory(key, data, limit):
    """Growing one size never shrinks the estimate; the run is refused (one line naming the
    estimate, max_memory and the keys behind its largest part) exactly when it is above it."""
    low, high = KEYS[key]
    small, large = sorted(data.draw(st.lists(st.integers(low, high), min_size=2, max_size=2)))
    base = ["method=adaptive", "method.window=20", f"max_memory={limit}"]
    totals = []
    for value in (small, large):
        cfg = tiny_config(*base, f"{key}={value}")
        total = sum(p.host + p.device for p in memory.estimate(cfg))
        totals.append(total)
        if total > limit * memory.GIB:
            with pytest.raises(ConfigError) as refused:
                memory.check(cfg)
            message = str(refused.value)
            assert "\n" not in message and "max_memory" in message and "GiB" in message
            largest = max(memory.estimate(cfg), key=lambda p: p.host + p.device)
            assert largest.what in message
        else:
            memory.check(cfg)
    assert totals[0] <= totals[1]


@pytest.mark.parametrize("overrides,part", [
    (["dataset=linear", "K=1000000", "dataset.train_length=2000000"], "the training graph"),
    (["method=adaptive", "method.num_windows=100000000"], "the estimator's windows"),
    (["model.hidden_size=100000"], "the parameters"),
    (["dataset.eval_chunk=1000000000"], "one evaluation chunk"),
])
def test_absurd_sizes_name_their_part(overrides, part):
    cfg = tiny_config("max_memory=1", *overrides)
    with pytest.raises(ConfigError, match=part):
        memory.check(cfg)


def test_the_machines_memory_is_read():
    host, gpu = memory.available("cpu")
    assert host is None or host > 0
    assert gpu is None


@pytest.mark.skipif(not (SHARED_DATA / "ptb").exists(), reason="needs the corpora")
@pytest.mark.parametrize("name", sorted(TOKENS))
def test_the_published_corpus_sizes_are_the_files(tmp_path, name):
    corpus = load_corpus(name, SHARED_DATA, cache_dir=tmp_path, download=False, progress=False)
    assert corpus.num_tokens == TOKENS[name] and corpus.vocab_size == VOCAB_SIZES[name]
