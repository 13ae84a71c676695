"""Estimates computed together (``atbptt.batched``): one pass over N×S windows gives the N
estimates of N separate passes where no dropout acts, and the switch leaves the default alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atbptt import batched
from atbptt.adaptive import Lag0, estimate, grad_norm_profile
from atbptt.config import Cell
from atbptt.controller import AdaptiveTruncation
from atbptt.models import ModelSpec, RNNModel

torch.set_num_threads(1)
VOCAB = 7


def ce_per_window(out, target):
    return F.cross_entropy(out, target, reduction="none")


def ce_mean(out, target):
    return F.cross_entropy(out, target)


def model_of(cell: Cell, dropout: float = 0.0, dtype=torch.float64) -> RNNModel:
    torch.manual_seed(0)
    spec = ModelSpec(cell, VOCAB, VOCAB, True, hidden_size=6, num_layers=2, embedding_size=4,
                     dropout=dropout)
    return RNNModel(spec).to(dtype)


def split(T: int = 150, B: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (T, B), generator=g)
    return x, torch.randint(0, VOCAB, (T, B), generator=g)


def run(model, batch: bool, seed: int = 3, **overrides):
    kwargs = dict(window=14, burn_in=4, num_windows=5, num_estimates=4, loss_fn=ce_per_window,
                  generator=torch.Generator().manual_seed(seed), deltas=(0.9, 0.5, 0.1),
                  k_min=2, k_max=14, grad_norm_bound="norm_sum")
    kwargs.update(overrides)
    return estimate(model, *split(), batch_estimates=batch, **kwargs)


@pytest.mark.parametrize("cell", list(Cell))
@pytest.mark.parametrize("lag0", [None, Lag0.state_entering_step])
@pytest.mark.parametrize("loss_fn", [ce_per_window, ce_mean])
def test_together_equals_separate_passes_in_eval_mode(cell, lag0, loss_fn):
    """float64, no dropout: every per-estimate profile to float64 rounding, the same K̂."""
    model = model_of(cell).eval()
    one = run(model, False, lag0=lag0, loss_fn=loss_fn)
    together = run(model, True, lag0=lag0, loss_fn=loss_fn)
    assert together.lag0 == one.lag0
    np.testing.assert_allclose(together.phi, one.phi, rtol=1e-12, atol=0)
    np.testing.assert_allclose(together.cum, one.cum, rtol=1e-12, atol=0)
    np.testing.assert_allclose(together.betas, one.betas, rtol=1e-12, atol=0)
    np.testing.assert_allclose(together.rel_biases, one.rel_biases, rtol=1e-10, atol=0)
    assert together.K_hat == one.K_hat and together.k_hats == one.k_hats
    for bound in one.by_bound:
        assert together.by_bound[bound][1] == one.by_bound[bound][1]


def test_together_equals_separate_passes_in_float32_with_inactive_dropout():
    """The training dtype, dropout configured but eval mode: K̂ equal, profiles to float32."""
    model = model_of(Cell.lstm, dropout=0.3, dtype=torch.float32).eval()
    one, together = run(model, False), run(model, True)
    np.testing.assert_allclose(together.phi, one.phi, rtol=1e-4)
    assert together.K_hat == one.K_hat


def test_profiles_split_back_per_group_and_one_group_is_the_plain_profile():
    model = model_of(Cell.gru).eval()
    x, y = split(20, 6)
    state = model.init_state(6)
    plain = grad_norm_profile(model, x[:12], y[:12], state, ce_mean)
    (single,) = batched.grad_norm_profiles(model, x[:12], y[:12], state, ce_mean, 1)
    assert torch.equal(single.phi, plain.phi) and torch.equal(single.cum, plain.cum)
    parts = batched.grad_norm_profiles(model, x[:12], y[:12], state, ce_mean, 3)
    for g, part in enumerate(parts):  # each group as if profiled alone, its own mean scale
        alone = grad_norm_profile(model, x[:12, 2 * g:2 * g + 2], y[:12, 2 * g:2 * g + 2],
                                  state[:, 2 * g:2 * g + 2], ce_mean)
        torch.testing.assert_close(part.phi, alone.phi, rtol=1e-12, atol=0)
        torch.testing.assert_close(part.cum, alone.cum, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="equal groups"):
        batched.grad_norm_profiles(model, x[:12], y[:12], state, ce_mean, 4)
    with pytest.raises(ValueError, match="groups=0"):
        batched.grad_norm_profiles(model, x[:12], y[:12], state, ce_mean, 0)


def test_with_dropout_active_the_masks_differ_but_windows_and_rng_do_not():
    """Training mode: deterministic, the global RNG untouched, the same generator consumption
    (the next draw agrees), but other dropout masks than separate passes (documented)."""
    model = model_of(Cell.lstm, dropout=0.3).train()
    before = torch.get_rng_state()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    one, together = run(model, False, generator=g1), run(model, True, generator=g2)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(g1.get_state(), g2.get_state())
    np.testing.assert_array_equal(run(model, True, generator=torch.Generator().manual_seed(5)).phi,
                                  together.phi)
    assert not np.allclose(together.phi, one.phi, rtol=1e-6)


def test_controller_switch_reaches_the_estimator(monkeypatch):
    model = model_of(Cell.lstm).eval()
    x, y = split()
    seen = []
    original = batched.profiles_together
    monkeypatch.setattr(batched, "profiles_together",
                        lambda *a, **k: seen.append(a[3]) or original(*a, **k))
    common = dict(delta=0.5, K0=None, window=14, burn_in=4, num_windows=5, num_estimates=3,
                  k_min=2, profile_dropout=False, seed=1)
    off = AdaptiveTruncation(model, x, y, ce_per_window, **common)
    assert seen == []
    on = AdaptiveTruncation(model, x, y, ce_per_window, batch_estimates=True, **common)
    assert seen == [3] and on.K == off.K
    on.fresh_estimate(2, torch.Generator().manual_seed(0))
    assert seen == [3, 2]
