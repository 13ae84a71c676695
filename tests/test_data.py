"""Generators: copy targets, spectral radii, reproducibility from dataset.seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from atbptt.config import DatasetConfig, DatasetName
from atbptt.data import (BLANK, START, companion, copy_streams, linear_system, load_task,
                         random_orthogonal, var_coefficients)


def test_copy_fixed_targets_equal_inputs_m_steps_earlier():
    split = copy_streams(500, 8, 10, 10, 6, np.random.default_rng(0))
    x, y = split.inputs, split.targets
    assert torch.equal(y[10:], x[:-10])
    assert set(x.unique().tolist()) <= set(range(6))
    # half of the time the input is blank (the output phase), and every segment starts with 1
    assert 0.4 < (x == BLANK).float().mean() < 0.6
    assert (x == START).any(dim=0).all()


def test_copy_variable_targets_follow_each_segment():
    rng = np.random.default_rng(3)
    split = copy_streams(400, 4, 5, 10, 6, rng)
    x, y = split.inputs.numpy(), split.targets.numpy()
    lengths = set()
    for b in range(4):
        starts = np.flatnonzero(x[:, b] == START)
        for s, nxt in zip(starts[:-1], starts[1:]):
            m = (nxt - s) // 2  # a segment: m symbols then m blanks
            lengths.add(int(m))
            assert np.array_equal(y[s + m:s + 2 * m, b], x[s:s + m, b])
            assert (x[s + m:s + 2 * m, b] == BLANK).all()
    assert lengths <= set(range(5, 11)) and len(lengths) > 2


def test_copy_random_phase_differs_between_streams():
    x = copy_streams(200, 16, 10, 10, 6, np.random.default_rng(0)).inputs
    first_start = [int(np.flatnonzero(x[:, b].numpy() == START)[0]) for b in range(16)]
    assert len(set(first_start)) > 3


@pytest.mark.parametrize("rho", [0.5, 0.9, 0.99])
def test_linear_system_has_requested_spectral_radius(rho):
    cfg = DatasetConfig(name=DatasetName.linear, rho=rho, state_dim=6)
    A = linear_system(cfg, np.random.default_rng(0))["A"]
    assert np.allclose(np.abs(np.linalg.eigvals(A)), rho)  # every eigenvalue: A = rho * Q
    Q = random_orthogonal(5, np.random.default_rng(1))
    assert np.allclose(Q @ Q.T, np.eye(5))


@pytest.mark.parametrize("order,dim,rho", [(1, 3, 0.8), (2, 4, 0.9), (3, 2, 0.5)])
def test_var_companion_has_requested_spectral_radius(order, dim, rho):
    coefs = var_coefficients(dim, order, rho, np.random.default_rng(0))
    assert coefs.shape == (order, dim, dim)
    C = companion(coefs)
    assert C.shape == (order * dim, order * dim)
    assert np.max(np.abs(np.linalg.eigvals(C))) == pytest.approx(rho, abs=1e-10)


def test_var_targets_are_next_inputs():
    cfg = DatasetConfig(name=DatasetName.var, train_length=50, eval_length=20, batch_size=3,
                        eval_batch_size=2)
    data = load_task(cfg)
    assert torch.equal(data.train.targets[:-1], data.train.inputs[1:])
    assert data.train.inputs.shape == (50, 3, 4) and data.valid.inputs.shape == (20, 2, 4)
    assert data.info["true_rho"] == pytest.approx(0.9)
    assert not data.classification


@pytest.mark.parametrize("name", ["copy", "copy_variable", "linear", "var"])
def test_dataset_seed_reproduces_data(name):
    kw = dict(name=DatasetName(name), train_length=60, eval_length=30, batch_size=4, eval_batch_size=2)
    if name == "copy_variable":
        kw["m_min"] = 5
    a, b = load_task(DatasetConfig(**kw, seed=3)), load_task(DatasetConfig(**kw, seed=3))
    c = load_task(DatasetConfig(**kw, seed=4))
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(a, split).inputs, getattr(b, split).inputs)
        assert torch.equal(getattr(a, split).targets, getattr(b, split).targets)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert not torch.equal(a.train.inputs[:30, :2], a.valid.inputs)  # splits are distinct draws
    assert a.tokens == {"train": 240, "valid": 60, "test": 60}
