"""The library's entry points (AdaptiveTruncation, adaptive.estimate, grad_norm_profile) turn
every bad argument into a ValueError naming it, and say what layout they expect."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from atbptt import adaptive
from atbptt.controller import AdaptiveTruncation

T, B, D, H = 60, 3, 2, 4


class Net(nn.Module):
    def __init__(self, batch_first: bool = False):
        super().__init__()
        self.rnn = nn.GRU(D, H, batch_first=batch_first)
        self.out = nn.Linear(H, 1)

    def init_state(self, batch: int, device=None):
        return torch.zeros(1, batch, H)

    def forward(self, x, state):
        h, state = self.rnn(x, state)
        return self.out(h), state


def loss(out, target):
    return ((out - target) ** 2).mean(-1)


def data(length: int = T):
    g = torch.Generator().manual_seed(0)
    return torch.randn(length, B, D, generator=g), torch.randn(length, B, 1, generator=g)


GOOD = dict(delta=0.5, K0=3, window=10, burn_in=2, num_windows=4, num_estimates=1, k_min=2,
            k_max=10, reestimate_every=5)
JUNK = [0, -1, 2.5, "3", True, None, float("nan"), float("inf"), 10 ** 6, -10 ** 6, 3.0]


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(bad=st.dictionaries(st.sampled_from(sorted(GOOD)), st.sampled_from(range(len(JUNK))),
                           min_size=1, max_size=2))
def test_any_bad_argument_is_a_value_error_naming_it(bad):
    args = {**GOOD, **{k: JUNK[i] for k, i in bad.items()}}
    torch.manual_seed(0)
    x, y = data()
    try:
        ctl = AdaptiveTruncation(Net(), x, y, loss, **args)
        ctl.reestimate()
    except ValueError as err:
        assert "\n" not in str(err)
        assert any(key in str(err) for key in bad) or "training split" in str(err), (bad, err)


@pytest.mark.parametrize("where", ["controller", "estimate", "profile"])
def test_a_batch_first_model_is_told_that_input_is_time_major(where):
    x, y = data()
    model = Net(batch_first=True)
    with pytest.raises(ValueError,
                       match="batch_first=True.*time-major input \\[T, B, \\.\\.\\.\\]"):
        if where == "controller":
            AdaptiveTruncation(model, x, y, loss, **GOOD)
        elif where == "estimate":
            adaptive.estimate(model, x, y, window=10, burn_in=2, num_windows=4, loss_fn=loss,
                              generator=torch.Generator().manual_seed(0))
        else:
            adaptive.grad_norm_profile(model, x[:10, :2], y[:10, :2], model.init_state(2), loss)


@pytest.mark.parametrize("inputs,targets,needle", [
    (lambda x, y: x[:0], lambda x, y: y[:0], "T >= 1"),  # a window of 0 steps
    (lambda x, y: x, lambda x, y: y[:5], "share their first two dimensions"),
    (lambda x, y: x.tolist(), lambda x, y: y, "inputs must be a time-major tensor"),
    (lambda x, y: x[:, 0, 0], lambda x, y: y, "inputs must be a time-major tensor"),
])
def test_profile_inputs_of_the_wrong_layout(inputs, targets, needle):
    x, y = data(10)
    model = Net()
    with pytest.raises(ValueError, match=needle):
        adaptive.grad_norm_profile(model, inputs(x, y), targets(x, y), model.init_state(B), loss)


def test_a_long_window_whose_gradients_vanish_has_a_finite_tail():
    """W = 3000 with φ̂ underflowing to 0 (was 0·inf: NaN and a numpy warning)."""
    phi = np.r_[np.geomspace(1.0, 1e-300, 400), np.zeros(2600)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tail = adaptive.geometric_tail(phi, 0.05, 2000)
        bound = adaptive.bias_bound(phi, 0.05, 2000)
    assert not np.isnan(tail).any() and not np.isnan(bound).any()
    assert (tail == 0).all()
