"""Initial weights (NOTES §4, Initialization): the paper's uniform scheme and PyTorch's."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from atbptt.config import Cell, Config, Init, MethodName
from atbptt.data import load_task
from atbptt.models import ModelSpec, RNNModel, paper_init_
from atbptt.train import build_model

torch.set_num_threads(1)


@pytest.mark.parametrize("cell", list(Cell))
def test_paper_init_by_hand(cell):
    """Each matrix uniform in ±sqrt(3/max(rows, cols)), computed by hand; vectors zero."""
    torch.manual_seed(0)
    model = RNNModel(ModelSpec(cell, 7, 7, token_inputs=True, hidden_size=5, num_layers=2,
                               embedding_size=3))
    gates = {Cell.lstm: 4, Cell.gru: 3, Cell.srnn: 1}[cell]
    expected = {"encoder.weight": math.sqrt(3 / 7),  # [7, 3]
                "core.weight_ih_l0": math.sqrt(3 / (gates * 5)),  # [gates*5, 3]
                "core.weight_hh_l0": math.sqrt(3 / (gates * 5)),  # [gates*5, 5]
                "core.weight_ih_l1": math.sqrt(3 / (gates * 5)),
                "core.weight_hh_l1": math.sqrt(3 / (gates * 5)),
                "decoder.weight": math.sqrt(3 / 7)}  # [7, 5]
    for name, param in model.named_parameters():
        if param.dim() == 1:
            assert torch.count_nonzero(param) == 0, name
        else:
            bound = expected[name]
            assert param.abs().max() <= bound + 1e-7, name
            assert param.abs().max() > 0.5 * bound, name  # drawn over the range, not zeros


def test_paper_init_is_uniform_on_a_large_matrix():
    torch.manual_seed(1)
    layer = nn.Linear(400, 1000)
    paper_init_(layer)
    bound = math.sqrt(3 / 1000)
    w = layer.weight.detach().double()
    assert abs(w.mean().item()) < 0.01 * bound
    assert w.var().item() == pytest.approx(bound ** 2 / 3, rel=0.02)  # Var U(-a, a) = a²/3
    assert torch.count_nonzero(layer.bias) == 0


def test_tied_decoder_shares_the_paper_initialized_embedding():
    torch.manual_seed(0)
    model = RNNModel(ModelSpec(Cell.lstm, 50, 50, True, hidden_size=8, num_layers=1,
                               embedding_size=8, tie_weights=True))
    assert model.decoder.weight is model.encoder.weight
    assert model.encoder.weight.abs().max() <= math.sqrt(3 / 50) + 1e-7
    assert torch.count_nonzero(model.decoder.bias) == 0


def test_torch_init_keeps_pytorch_defaults():
    """init=torch: the embedding is N(0, 1) (std ≈ 1), biases are not zero."""
    torch.manual_seed(0)
    model = RNNModel(ModelSpec(Cell.lstm, 2000, 2000, True, hidden_size=16, num_layers=1,
                               embedding_size=16, init=Init.torch))
    assert model.encoder.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert torch.count_nonzero(model.core.bias_ih_l0) > 0


def test_same_seed_same_initial_weights_for_every_method_and_K():
    data = load_task(Config().dataset)
    device = torch.device("cpu")
    reference = build_model(Config(seed=3), data, device).state_dict()
    for kwargs in ({"K": 5}, {"K": 30}, {"delta": 0.1}):
        cfg = Config(seed=3, **kwargs)
        if "delta" in kwargs:
            cfg.method.name = MethodName.adaptive
        other = build_model(cfg, data, device).state_dict()
        assert all(torch.equal(reference[k], other[k]) for k in reference)
    different = build_model(Config(seed=4), data, device).state_dict()
    assert not torch.equal(reference["core.weight_hh_l0"], different["core.weight_hh_l0"])
