"""Language models on the real corpora (PTB; needs the verified copies, see conftest)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from atbptt.config import Cell, DatasetConfig, DatasetName, Style
from atbptt.data import load_task
from atbptt.models import ModelSpec, RNNModel
from atbptt.tbptt import Walker, chunk_forward, evaluate, sequence_loss
from conftest import SHARED_DATA, run_cli

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "ptb" / "ptb.train.txt").exists(),
                                reason=f"PTB not found under {SHARED_DATA} (set ATBPTT_DATA)")


@pytest.fixture(scope="module")
def ptb(tmp_path_factory):
    cfg = DatasetConfig(name=DatasetName.ptb, batch_size=32, eval_batch_size=10,
                        data_dir=str(SHARED_DATA))
    return load_task(cfg, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_ptb_streams(ptb):
    assert ptb.input_size == 10000 and ptb.classification and ptb.token_inputs
    assert ptb.tokens == {"train": 929589, "valid": 73760, "test": 82430}
    assert ptb.train.num_streams == 32 and ptb.valid.num_streams == 10
    assert torch.equal(ptb.train.targets[:-1], ptb.train.inputs[1:])  # next-token targets
    assert ptb.train.length == 929589 // 32 - 1


def test_fifty_steps_lower_the_loss_from_vocabulary_scale_perplexity(ptb):
    torch.manual_seed(0)
    model = RNNModel(ModelSpec(Cell.lstm, 10000, 10000, True, hidden_size=32, num_layers=1,
                               embedding_size=32, tie_weights=True))
    loss_fn = sequence_loss(True)
    head = type(ptb.valid)(ptb.valid.inputs[:300], ptb.valid.targets[:300])
    ppl0 = math.exp(evaluate(model, head, 100, loss_fn, "cpu"))
    assert 10000 / 3 < ppl0 < 10000 * 3  # untrained: of the order of the vocabulary size
    opt = torch.optim.SGD(model.parameters(), lr=10 * 10 ** 0.5)
    walker, losses = Walker.start(model, 32, "cpu"), []
    for _ in range(50):
        opt.zero_grad()
        loss, _ = chunk_forward(model, ptb.train, walker, 10, Style.overlap, loss_fn, "cpu")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0 / 10)
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 1.0
    assert math.exp(evaluate(model, head, 100, loss_fn, "cpu")) < ppl0 / 5


def test_cli_ptb_run_records_vocabulary_and_tokens(tmp_path):
    out = tmp_path / "ptb"
    result = run_cli(["dataset=ptb", "model.hidden_size=16", "model.embedding_size=16",
                      "K=10", "epochs=0.002", "method.log_estimates=0", "progress=false",
                      f"dataset.data_dir={SHARED_DATA}", f"hydra.run.dir={out}"], cwd=tmp_path,
                     env={"ATBPTT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["vocab_size"] == 10000 and info["status"] == "finished"
    assert info["tokens"] == {"train": 929589, "valid": 73760, "test": 82430}


@pytest.mark.parametrize("init, low, high", [("paper", 8000, 12000), ("torch", 20000, math.inf)])
def test_untrained_ptb_model_starts_near_the_vocabulary_size(ptb, init, high, low):
    """NOTES §4: with the paper's initialization an untrained PTB model (LSTM 1x200, tied)
    has valid perplexity within 20 % of the vocabulary size; PyTorch's defaults start far above."""
    from atbptt.config import Init

    torch.manual_seed(0)
    model = RNNModel(ModelSpec(Cell.lstm, 10000, 10000, True, hidden_size=200, num_layers=1,
                               embedding_size=200, dropout=0.2, tie_weights=True, init=Init(init)))
    valid = type(ptb.valid)(ptb.valid.inputs[:2000], ptb.valid.targets[:2000])
    ppl = math.exp(evaluate(model, valid, 100, sequence_loss(True), torch.device("cpu")))
    assert low < ppl < high
