"""``AdaptiveTruncation``: the estimator's schedule, RNG and timing for a plain loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import atbptt
from atbptt.adaptive import Lag0, estimate
from atbptt.controller import AdaptiveTruncation
from word_lm import WordLM

torch.set_num_threads(1)

VOCAB = 11
SETTINGS = dict(delta=0.5, window=12, burn_in=3, num_windows=6, k_min=2, k_max=10)


def model_and_split(dropout: float = 0.0):
    torch.manual_seed(0)
    model = WordLM("LSTM", VOCAB, 5, 8, 2, dropout=dropout).double()
    ids = torch.randint(0, VOCAB, (200, 4), generator=torch.Generator().manual_seed(1))
    return model, ids[:-1], ids[1:]


def controller(model, x, y, **overrides):
    return AdaptiveTruncation(model, x, y, nn.CrossEntropyLoss(), **{**SETTINGS, **overrides})


def test_exported_from_the_package():
    assert atbptt.AdaptiveTruncation is AdaptiveTruncation


def test_keeps_K0_until_the_schedule_then_takes_K_hat():
    model, x, y = model_and_split()
    ctl = controller(model, x, y, K0=7, reestimate_every=50, seed=3)
    assert ctl.K == 7 and ctl.estimate is None and ctl.delta_hat is None and ctl.seconds == 0
    assert [ctl.step(20), ctl.step(20)] == [False, False] and ctl.K == 7
    assert ctl.step(20)  # 60 >= 50 time steps
    direct = estimate(model.train(), x, y, window=12, burn_in=3, num_windows=6, k_min=2, k_max=10,
                      loss_fn=nn.CrossEntropyLoss(), deltas=(1.0, 0.9, 0.5, 0.1),
                      generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(ctl.estimate.phi, direct.phi)  # the same windows and profile
    assert ctl.K == ctl.K_hat == direct.K_hat[0.5] and 2 <= ctl.K <= 10
    assert ctl.delta_hat == direct.delta_hat(ctl.K) and ctl.beta_hat == direct.beta_hat
    assert ctl.estimate.lag0 == Lag0.state_entering_step
    assert ctl.since_estimate == 0 and ctl.num_estimates_done == 1 and ctl.seconds > 0
    ctl.step(49)
    assert ctl.num_estimates_done == 1


def test_without_K0_estimates_at_once_and_K_follows_delta():
    model, x, y = model_and_split()
    Ks = [controller(model, x, y, delta=d, seed=0).K for d in (0.9, 0.5, 0.1, 0.01)]
    assert Ks == sorted(Ks) and Ks[0] < Ks[-1]  # smaller δ: larger K (same windows)


def test_leaves_global_rng_and_model_mode_alone():
    model, x, y = model_and_split(dropout=0.3)
    model.eval()
    before = torch.get_rng_state()
    ctl = controller(model, x, y)
    assert torch.equal(torch.get_rng_state(), before) and not model.training
    eval_mode = controller(model, x, y, profile_dropout=False)
    assert not np.array_equal(ctl.estimate.phi, eval_mode.estimate.phi)  # dropout was active


def test_state_dict_resumes_the_schedule_and_windows():
    model, x, y = model_and_split()
    whole = controller(model, x, y, K0=5, reestimate_every=10, seed=1)
    whole.step(10)
    saved = whole.state_dict()
    whole.step(4)
    whole.step(6)
    resumed = controller(model, x, y, K0=99, reestimate_every=10, seed=42)
    resumed.load_state_dict(saved)
    resumed.step(4)
    resumed.step(6)
    np.testing.assert_array_equal(resumed.estimate.phi, whole.estimate.phi)
    assert resumed.K == whole.K and resumed.num_estimates_done == whole.num_estimates_done == 2


def test_grad_norm_bound_reaches_the_estimate():
    model, x, y = model_and_split()
    by = {b: controller(model, x, y, grad_norm_bound=b, delta=0.9) for b in ("grad", "norm_sum")}
    for bound, ctl in by.items():
        assert ctl.estimate.grad_norm_bound.value == bound
        assert ctl.K == ctl.estimate.by_bound[ctl.estimate.grad_norm_bound][1][0.9]


@pytest.mark.parametrize("bad, message", [
    (dict(delta=0.0), "delta"), (dict(k_min=11), "k_min"), (dict(k_max=13), "k_max"),
    (dict(K0=0), "K0"), (dict(window=197), "training split")])
def test_bad_settings_raise(bad, message):
    model, x, y = model_and_split()
    with pytest.raises(ValueError, match=message):
        controller(model, x, y, **bad)


def test_the_library_imports_without_hydra():
    """``from atbptt import AdaptiveTruncation`` loads neither Hydra nor OmegaConf."""
    import subprocess
    import sys

    code = ("import sys; from atbptt import AdaptiveTruncation; import atbptt.adaptive, "
            "atbptt.models, atbptt.tbptt, atbptt.artbp; "
            "assert not {'hydra', 'omegaconf'} & set(sys.modules), sorted(sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
