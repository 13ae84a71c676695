"""Known-answer tests for the estimator (NOTES §3): profile, β̂, bound, K̂(δ), estimate."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atbptt.adaptive import (Lag0, bias_bound, choose_K, estimate, geometric_tail,
                             grad_norm_profile, relative_bias, sample_windows, true_relative_bias)
from atbptt.config import BetaMethod, Cell, GradNormBound
from atbptt.models import ModelSpec, RNNModel
from word_lm import (WordLM, WordLMRecurDecode, WordLMStateReadout, as_tuple, copy_weights,
                     per_window)

torch.set_num_threads(1)

VOCAB, W, S = 7, 9, 5


def ce_per_window(out, target):
    return F.cross_entropy(out, target, reduction="none")


def small_model(cell: Cell, layers: int = 2, seed: int = 0) -> RNNModel:
    torch.manual_seed(seed)
    spec = ModelSpec(cell, VOCAB, VOCAB, token_inputs=True, hidden_size=6,
                     num_layers=layers, embedding_size=4)
    return RNNModel(spec).double().eval()


def random_state(model: RNNModel, batch: int):
    shape = (model.spec.num_layers, batch, model.spec.hidden_size)
    h = 0.5 * torch.randn(shape, dtype=torch.float64)
    return (h, 0.5 * torch.randn(shape, dtype=torch.float64)) if model.is_lstm else h


def brute_force_profile(model, x, y, state):
    """φ and G lag by lag: restart from a leaf copy of the state at lag k."""
    states = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            _, state = model.recur(x[t:t + 1], state)
            states.append(state)
    grads = []
    for k in range(x.shape[0]):
        leaf = tuple(s.clone().requires_grad_() for s in as_tuple(states[-1 - k]))
        start = leaf if model.is_lstm else leaf[0]
        end = model.recur(x[x.shape[0] - k:], start)[1] if k > 0 else start
        loss = ce_per_window(model.decode(model.state_output(end))[0], y[-1]).sum()
        g = torch.autograd.grad(loss, leaf, allow_unused=True)
        g = [torch.zeros_like(s) if gi is None else gi for gi, s in zip(g, leaf)]
        grads.append(torch.cat([gi.transpose(0, 1).reshape(x.shape[1], -1) for gi in g], 1))
    grads = torch.stack(grads)  # (W, S, D)
    return grads.norm(dim=2), grads.mean(1).cumsum(0).norm(dim=1)


@pytest.mark.parametrize("cell", [Cell.lstm, Cell.gru, Cell.srnn])
def test_profile_matches_brute_force(cell):
    model = small_model(cell)
    torch.manual_seed(1)
    x, y = torch.randint(0, VOCAB, (W, S)), torch.randint(0, VOCAB, (W, S))
    state = random_state(model, S)
    phi, cum = grad_norm_profile(model, x, y, state, ce_per_window)
    phi_bf, cum_bf = brute_force_profile(model, x, y, state)
    assert phi.shape == (W, S) and cum.shape == (W,)
    assert torch.all(phi > 0)  # lag 0 included: the readout reads the state node
    torch.testing.assert_close(phi, phi_bf, rtol=1e-5, atol=0)
    torch.testing.assert_close(cum, cum_bf, rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------- any module

def word_lm(rnn_type: str, cls=WordLM, seed: int = 0, **kwargs) -> WordLM:
    """pytorch/examples' shape, 2 layers, float64, eval mode (exact comparisons)."""
    torch.manual_seed(seed)
    return cls(rnn_type, VOCAB, 4, 6, 2, **kwargs).double().eval()


def word_lm_inputs(model, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x, y = (torch.randint(0, VOCAB, (W, S), generator=gen),
            torch.randint(0, VOCAB, (W, S), generator=gen))
    state = tuple(0.5 * torch.randn(s.shape, generator=gen, dtype=torch.float64)
                  for s in as_tuple(model.init_hidden(S)))
    return x, y, (state if model.rnn_type == "LSTM" else state[0])


def brute_force_entering(model, x, y, state, loss_fn):
    """φ and G lag by lag in the authors' convention: lag k is the state entering the k-th
    step before the last, s_{W-1-k}; restart from a leaf copy of it and run k+1 steps."""
    states = [state]
    with torch.no_grad():
        for t in range(x.shape[0]):
            states.append(model(x[t:t + 1], states[-1])[1])
    grads = []
    for k in range(x.shape[0]):
        start = states[x.shape[0] - 1 - k]
        leaf = tuple(s.clone().requires_grad_() for s in as_tuple(start))
        out, _ = model(x[x.shape[0] - 1 - k:], leaf if isinstance(start, tuple) else leaf[0])
        out = out[-1] if not model.flat else out[-x.shape[1]:]
        grads.append(per_window(torch.autograd.grad(loss_fn(out, y[-1]), leaf), x.shape[1]))
    grads = torch.stack(grads)  # (W, S, D)
    return grads.norm(dim=2), grads.mean(1).cumsum(0).norm(dim=1)


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_examples_shaped_model_with_mean_loss_profiles_the_entering_state(rnn_type):
    """pytorch/examples' shape and nn.CrossEntropyLoss(), unchanged: the readout does not
    go through the returned state, so lag 0 is the state entering the last step."""
    model = word_lm(rnn_type)
    x, y, state = word_lm_inputs(model)
    profile = grad_norm_profile(model, x, y, state, nn.CrossEntropyLoss())
    assert profile.lag0 == Lag0.state_entering_step and profile.scalar_loss
    phi_bf, cum_bf = brute_force_entering(model, x, y, state, nn.CrossEntropyLoss())
    assert profile.phi.shape == (W, S) and torch.all(profile.phi > 0)
    torch.testing.assert_close(profile.phi, phi_bf, rtol=1e-8, atol=0)
    torch.testing.assert_close(profile.cum, cum_bf, rtol=1e-8, atol=0)
    # the mean over S windows: 1/S of the per-window gradients
    per = grad_norm_profile(model, x, y, state, nn.CrossEntropyLoss(reduction="none"))
    assert not per.scalar_loss
    torch.testing.assert_close(profile.phi, per.phi / S, rtol=1e-12, atol=0)


def test_flat_log_softmax_output_with_nll_loss_profiles_the_same():
    """The current pytorch/examples model returns log-softmax [T*B, V] for nn.NLLLoss."""
    model = word_lm("LSTM")
    x, y, state = word_lm_inputs(model)
    flat = copy_weights(word_lm("LSTM", flat=True), model)
    phi, cum = grad_norm_profile(flat, x, y, state, nn.NLLLoss())
    phi_ce, cum_ce = grad_norm_profile(model, x, y, state, nn.CrossEntropyLoss())
    torch.testing.assert_close(phi, phi_ce, rtol=1e-12, atol=0)
    torch.testing.assert_close(cum, cum_ce, rtol=1e-12, atol=0)
    phi_bf, _ = brute_force_entering(flat, x, y, state, nn.NLLLoss())
    torch.testing.assert_close(phi, phi_bf, rtol=1e-8, atol=0)


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_recur_decode_protocol_takes_the_fast_path(rnn_type):
    """recur/decode: the W-1 earlier steps are not decoded, the same φ as the generic path;
    with state_output lag 0 becomes the state after the last step (one lag earlier)."""
    generic = word_lm(rnn_type)
    x, y, state = word_lm_inputs(generic)
    base = grad_norm_profile(generic, x, y, state, nn.CrossEntropyLoss())
    fast = copy_weights(word_lm(rnn_type, WordLMRecurDecode), generic)
    profile = grad_norm_profile(fast, x, y, state, nn.CrossEntropyLoss())
    assert fast.decode_calls == [1]  # the last step only
    assert profile.lag0 == Lag0.state_entering_step
    torch.testing.assert_close(profile.phi, base.phi, rtol=1e-12, atol=0)
    torch.testing.assert_close(profile.cum, base.cum, rtol=1e-12, atol=0)
    after = copy_weights(word_lm(rnn_type, WordLMStateReadout), generic)
    profile = grad_norm_profile(after, x, y, state, nn.CrossEntropyLoss())
    assert after.decode_calls == [1] and profile.lag0 == Lag0.state_after_step
    torch.testing.assert_close(profile.phi[1:], base.phi[:-1], rtol=1e-10, atol=0)
    assert torch.all(profile.phi[0] > 0)


class NoStateReadout(nn.Module):
    """The output depends on the input only; the state is passed through."""

    def __init__(self, detach: bool = False):
        super().__init__()
        self.lin, self.detach = nn.Linear(3, 2), detach

    def forward(self, x, state):
        return self.lin(x), (state.detach() if self.detach else state * 1.0)


@pytest.mark.parametrize("detach, message", [(False, "depends on none"), (True, "detach")])
def test_profile_rejects_loss_without_state(detach, message):
    x = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=message):
        grad_norm_profile(NoStateReadout(detach), x, x[..., :2], torch.zeros(1, 2, 4),
                          lambda out, target: ((out - target) ** 2).sum(1))


def test_float32_profile_matches_fused_kernels_and_restores_flags():
    """On the CPU the profile runs nn.LSTM without oneDNN; the brute force uses it."""
    model = small_model(Cell.lstm).float()
    torch.manual_seed(2)
    x, y = torch.randint(0, VOCAB, (W, S)), torch.randint(0, VOCAB, (W, S))
    state = tuple(s.float() for s in random_state(model, S))
    before = torch.backends.mkldnn.enabled
    phi, cum = grad_norm_profile(model, x, y, state, ce_per_window)
    assert torch.backends.mkldnn.enabled == before
    phi_bf, cum_bf = brute_force_profile(model, x, y, state)
    torch.testing.assert_close(phi, phi_bf.double(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(cum, cum_bf.double(), rtol=1e-4, atol=1e-7)


def test_profile_casts_float32_state_to_model_dtype():
    model = small_model(Cell.gru)  # float64
    x = torch.randint(0, VOCAB, (W, S))
    state = random_state(model, S)
    phi, cum = grad_norm_profile(model, x, x, state.float(), ce_per_window)
    phi64, cum64 = grad_norm_profile(model, x, x, state.float().double(), ce_per_window)
    torch.testing.assert_close(phi, phi64, rtol=0, atol=0)
    torch.testing.assert_close(cum, cum64, rtol=0, atol=0)


def test_profile_rejects_loss_of_another_shape():
    model = small_model(Cell.gru)
    x = torch.randint(0, VOCAB, (W, S))
    with pytest.raises(ValueError, match="one loss per window"):
        grad_norm_profile(model, x, x, random_state(model, S),
                          lambda out, target: F.cross_entropy(out, target, reduction="none")[:-1])


@pytest.mark.parametrize("make, lag0", [(lambda: small_model(Cell.lstm), Lag0.state_after_step),
                                        (lambda: word_lm("GRU"), Lag0.state_entering_step)])
def test_per_window_mean_and_sum_losses_give_the_same_estimate(make, lag0):
    """φ and G scale by 1/S under a mean, by 1 under a sum; β̂, δ̂ and K̂ do not change."""
    model = make()
    ests = {name: run_estimate(model, 5, loss_fn=fn, tau=7) for name, fn in [
        ("none", ce_per_window), ("mean", nn.CrossEntropyLoss()),
        ("sum", nn.CrossEntropyLoss(reduction="sum"))]}
    base = ests["none"]
    assert all(est.lag0 == lag0 for est in ests.values())
    assert np.all(base.phi > 0) and len(set(base.K_hat.values())) > 1  # a non-trivial answer
    np.testing.assert_allclose(ests["mean"].phi, base.phi / 6, rtol=1e-12)  # S = 6 windows
    np.testing.assert_allclose(ests["sum"].phi, base.phi, rtol=1e-12)
    for est in (ests["mean"], ests["sum"]):
        assert est.beta_hat == pytest.approx(base.beta_hat, rel=1e-10)
        for bound in GradNormBound:
            np.testing.assert_allclose(est.by_bound[bound][0], base.by_bound[bound][0], rtol=1e-9)
            assert est.by_bound[bound][1] == base.by_bound[bound][1]


def test_estimate_needs_a_zero_state():
    model = NoStateReadout()
    with pytest.raises(ValueError, match="init_state"):
        estimate(model, torch.randn(30, 2, 3), torch.randn(30, 2, 2), window=5, burn_in=1,
                 num_windows=2, loss_fn=lambda o, t: ((o - t) ** 2).sum(1),
                 generator=torch.Generator().manual_seed(0))


class LinearRNN(nn.Module):
    """h_t = A h_{t-1} + B x_t, out_t = C h_t; state [1, S, H] (NOTES §2 ground truth)."""

    def __init__(self, rho: float, hidden: int = 6, inputs: int = 3, outputs: int = 2):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        Q, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=gen, dtype=torch.float64))
        self.A = nn.Parameter(rho * Q)
        self.B = nn.Parameter(torch.randn(hidden, inputs, generator=gen, dtype=torch.float64))
        self.C = nn.Parameter(torch.randn(outputs, hidden, generator=gen, dtype=torch.float64))

    def forward(self, x, state):
        outs = []
        for x_t in x:  # (S, inputs); out is read from the state node returned
            state = state @ self.A.T + x_t @ self.B.T
            outs.append(state[0] @ self.C.T)
        return torch.stack(outs), state


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_linear_rnn_beta_is_spectral_radius(rho):
    model = LinearRNN(rho)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(30, 8, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(30, 8, 2, generator=gen, dtype=torch.float64)
    state = torch.randn(1, 8, 6, generator=gen, dtype=torch.float64)
    phi, cum = grad_norm_profile(model, x, y, state,
                                 lambda out, target: ((out - target) ** 2).sum(1))
    # ‖(Aᵀ)^k v‖ = ρ^k ‖v‖ exactly, window by window
    np.testing.assert_allclose(phi[1:] / phi[:-1], rho, rtol=1e-9)
    beta_hat, _ = relative_bias(phi, cum, BetaMethod.ols, tau=20)
    assert beta_hat == pytest.approx(rho, abs=1e-4)


# ----------------------------------------------------------------------------- hand-computed

PHI = np.array([8.0, 4.0, 2.0, 1.0, 0.5, 0.25])  # exactly geometric, β = 1/2
CUM = np.array([20.0, 25.0, 30.0, 31.0, 31.5, 31.7])


def test_bound_and_relative_bias_by_hand():
    beta_hat, rel = relative_bias(PHI, CUM, "ols", tau=3)
    assert beta_hat == pytest.approx(0.5, rel=1e-12)
    # K < τ=3: Σ_{k=K}^{3} φ̂_k + φ̂_3/(1−β̂); K ≥ 3: φ̂_3 β̂^{K−3}/(1−β̂)
    E = np.array([8 + 4 + 2 + 1 + 2, 4 + 2 + 1 + 2, 2 + 1 + 2, 2, 1, 0.5, 0.25])
    np.testing.assert_allclose(bias_bound(PHI, beta_hat, 3), E, rtol=1e-12)
    # G_k − E(k) = 3, 16, 25, 29, 30.5, 31.2 → ℓ = 31.2
    np.testing.assert_allclose(rel, E[1:] / 31.2, rtol=1e-12)
    assert choose_K(rel, 0.1, 1, 10) == 3  # δ̂(3) = 2/31.2 < 0.1, δ̂(2) = 5/31.2 > 0.1


def test_per_window_phi_is_averaged():
    per_window = np.stack([0.5 * PHI, 1.5 * PHI], axis=1)  # [W, S], mean = PHI
    beta_a, rel_a = relative_bias(per_window, CUM, tau=3)
    beta_b, rel_b = relative_bias(PHI, CUM, tau=3)
    assert beta_a == pytest.approx(beta_b) and np.allclose(rel_a, rel_b)


def test_tau_defaults_to_window_minus_burn_in():
    phi = 2.0 * 0.8 ** np.arange(10.0) + np.r_[np.zeros(7), 1.0, 0.0, 0.0]
    _, rel_tau = relative_bias(phi, 10 * np.ones(10), tau=6)
    _, rel_burn = relative_bias(phi, 10 * np.ones(10), burn_in=4)
    np.testing.assert_array_equal(rel_tau, rel_burn)


def test_no_positive_lower_bound_gives_infinite_bias():
    _, rel = relative_bias(PHI, np.zeros(6), tau=3)
    assert np.all(np.isinf(rel))
    assert choose_K(rel, 0.5, 2, 4) == 4


def test_smaller_delta_never_gives_smaller_K():
    _, rel = relative_bias(PHI, CUM, tau=3)
    rng = np.random.default_rng(0)
    for curve in [rel, rng.random(30), np.sort(rng.random(30))[::-1]]:
        Ks = [choose_K(curve, d, 1, 100) for d in (1.0, 0.9, 0.5, 0.3, 0.1, 0.01, 1e-6)]
        assert Ks == sorted(Ks)


def test_growing_profile_takes_largest_K_then_clamps():
    phi = 2.0 ** np.arange(6.0)
    beta_hat, rel = relative_bias(phi, 100 * np.ones(6), tau=3)
    assert beta_hat == pytest.approx(2.0)
    assert np.all(np.isinf(rel))
    assert choose_K(rel, 0.9, 1, 100) == 6  # the window's largest K
    assert choose_K(rel, 0.9, 1, 4) == 4  # then clamped to k_max


def test_all_zero_profile_is_finite():
    beta_hat, rel = relative_bias(np.zeros((6, 3)), np.zeros(6), tau=3)
    assert math.isfinite(beta_hat) and np.all(rel == 0)
    assert choose_K(rel, 0.1, 2, 5) == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["phi", "cum"])
def test_non_finite_input_raises(bad, where):
    phi, cum = PHI.copy(), CUM.copy()
    (phi if where == "phi" else cum)[2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        relative_bias(phi, cum, tau=3)


@pytest.mark.parametrize("method", list(BetaMethod))
def test_beta_methods_recover_exact_geometric_decay(method):
    phi = 3.0 * 0.7 ** np.arange(20.0)
    beta_hat, _ = relative_bias(phi, np.ones(20), method, tau=5)
    assert beta_hat == pytest.approx(0.7, rel=1e-10)
    np.testing.assert_allclose(geometric_tail(phi, beta_hat, 5), phi, rtol=1e-10)


def test_max_and_quantile_beta_by_hand():
    phi = np.array([1.0, 0.5, 0.3, 0.2, 0.15, 0.1])
    log = np.log(phi)
    slopes_from_tau = [(log[k] - log[2]) / (k - 2) for k in (3, 4, 5)]
    beta_max, _ = relative_bias(phi, np.ones(6), "max", tau=2)
    assert beta_max == pytest.approx(math.exp(max(slopes_from_tau)))
    pairs = [(log[j] - log[i]) / (j - i) for i in range(2, 6) for j in range(i + 1, 6)]
    beta_q, _ = relative_bias(phi, np.ones(6), "quantile", tau=2)
    assert beta_q == pytest.approx(math.exp(np.quantile(pairs, 0.95)))


# ----------------------------------------------------------------------------- estimate, audit

def token_split(T: int = 120, B: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, VOCAB, (T, B), generator=gen),
            torch.randint(0, VOCAB, (T, B), generator=gen))


def test_sample_windows_are_contiguous_slices():
    T, B = 50, 3
    inputs = torch.arange(T * B).reshape(T, B)  # value t*B + b
    x, y = sample_windows(inputs, -inputs, 10, 7, torch.Generator().manual_seed(0))
    assert x.shape == (10, 7)
    assert torch.all(x[1:] - x[:-1] == B) and torch.equal(y, -x)


def run_estimate(model, seed: int, **overrides):
    kwargs = dict(window=12, burn_in=3, num_windows=6, num_estimates=2, loss_fn=ce_per_window,
                  generator=torch.Generator().manual_seed(seed), beta_method=BetaMethod.ols,
                  tau=None, deltas=(0.9, 0.5, 0.1), k_min=2, k_max=10, device="cpu")
    kwargs.update(overrides)
    return estimate(model, *token_split(), **kwargs)


def test_estimate_is_deterministic_and_leaves_global_rng_alone():
    model = small_model(Cell.lstm)
    before = torch.get_rng_state()
    first = run_estimate(model, 3)
    assert torch.equal(torch.get_rng_state(), before)
    second = run_estimate(model, 3)
    np.testing.assert_array_equal(second.phi, first.phi)
    np.testing.assert_array_equal(second.rel_bias, first.rel_bias)
    assert second.K_hat == first.K_hat and second.beta_hat == first.beta_hat
    assert not np.array_equal(run_estimate(model, 4).phi, first.phi)


def test_estimate_fields_agree():
    est = run_estimate(small_model(Cell.lstm), 0, num_estimates=1)
    assert est.phi.shape == est.cum.shape == est.rel_bias.shape == est.tail.shape == (12,)
    assert est.tau == 12 - 3 and est.seconds > 0
    beta_hat, rel = relative_bias(est.phi, est.cum, tau=est.tau)  # one profile: the same
    assert beta_hat == pytest.approx(est.beta_hat) and np.allclose(rel, est.rel_bias)
    assert set(est.K_hat) == {0.9, 0.5, 0.1}
    assert all(2 <= K <= 10 for K in est.K_hat.values())
    assert est.K_hat[0.1] >= est.K_hat[0.5] >= est.K_hat[0.9]
    assert est.delta_hat(5) == est.rel_bias[4]
    assert est.delta_hat(14) == pytest.approx(est.rel_bias[-1] * est.beta_hat ** 2)


def test_true_relative_bias_of_tbptt():
    model = small_model(Cell.lstm)
    x, y = torch.randint(0, VOCAB, (W, S)), torch.randint(0, VOCAB, (W, S))
    state = random_state(model, S)
    assert true_relative_bias(model, x, y, state, ce_per_window, W) == 0.0
    biases = [true_relative_bias(model, x, y, state, ce_per_window, K) for K in (1, 2)]
    assert all(b > 0 for b in biases)
    with pytest.raises(ValueError):
        true_relative_bias(model, x, y, state, ce_per_window, W + 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_profile_on_cuda_in_eval_mode_matches_cpu():
    model = small_model(Cell.lstm)
    x, y = torch.randint(0, VOCAB, (W, S)), torch.randint(0, VOCAB, (W, S))
    state = random_state(model, S)
    phi, cum = grad_norm_profile(model, x, y, state, ce_per_window)
    model.cuda()
    phi_gpu, cum_gpu = grad_norm_profile(model, x.cuda(), y.cuda(),
                                         tuple(s.cuda() for s in state), ce_per_window)
    torch.testing.assert_close(phi_gpu, phi, rtol=1e-6, atol=0)
    torch.testing.assert_close(cum_gpu, cum, rtol=1e-6, atol=0)
    est = estimate(model, *token_split(), window=8, burn_in=2, num_windows=4,
                   loss_fn=ce_per_window, generator=torch.Generator().manual_seed(0))
    assert np.all(np.isfinite(est.phi))


# ------------------------------------------------------------------------- stand-ins for ‖E ĝ_K‖

def test_norm_sum_stand_in_by_hand():
    """norm_sum: G_k = Σ_{j≤k} φ̂_j (NOTES §3 step 2), the rest as for grad."""
    beta_hat, rel = relative_bias(PHI, CUM, "ols", tau=3, grad_norm_bound="norm_sum")
    E = bias_bound(PHI, beta_hat, 3)
    G = np.cumsum(PHI)  # 8, 12, 14, 15, 15.5, 15.75
    ell = np.max(G - E[:6])  # G − E = −9, 3, 9, 13, 14.5, 15.25 → ℓ = 15.25 at k = 5
    assert ell == pytest.approx(15.25)
    np.testing.assert_allclose(rel, E[1:] / ell, rtol=1e-12)


@pytest.mark.parametrize("cell", list(Cell))
def test_norm_sum_never_gives_a_larger_delta_hat(cell):
    """Σ‖·‖ ≥ ‖Σ·‖: on a real profile the norm_sum curve is at least G, so its δ̂ is at most
    grad's and its K̂(δ) never larger."""
    model = small_model(cell)
    x, y = torch.randint(0, VOCAB, (W, S)), torch.randint(0, VOCAB, (W, S))
    phi, cum = grad_norm_profile(model, x, y, random_state(model, S), ce_per_window)
    assert np.all(np.cumsum(phi.numpy().mean(1)) >= cum.numpy() - 1e-12)
    _, rel_grad = relative_bias(phi.numpy(), cum.numpy(), tau=W - 2)
    _, rel_sum = relative_bias(phi.numpy(), cum.numpy(), tau=W - 2, grad_norm_bound="norm_sum")
    assert np.all(rel_sum <= rel_grad + 1e-12)
    for delta in (0.9, 0.5, 0.1):
        assert choose_K(rel_sum, delta, 1, W) <= choose_K(rel_grad, delta, 1, W)


def test_estimate_computes_both_stand_ins_from_the_same_profiles():
    model = small_model(Cell.lstm)
    grad = run_estimate(model, 0, num_estimates=1)
    norm = run_estimate(model, 0, num_estimates=1, grad_norm_bound="norm_sum")
    np.testing.assert_array_equal(grad.phi, norm.phi)  # same windows, same profile
    for est in (grad, norm):
        for bound in ("grad", "norm_sum"):
            _, rel = relative_bias(est.phi, est.cum, tau=est.tau, grad_norm_bound=bound)
            np.testing.assert_allclose(est.by_bound[GradNormBound(bound)][0], rel)
    np.testing.assert_array_equal(norm.rel_bias, grad.by_bound[GradNormBound.norm_sum][0])
    assert norm.K_hat == grad.by_bound[GradNormBound.norm_sum][1]
    assert grad.delta_hat(3, "norm_sum") == norm.delta_hat(3)


def test_estimate_in_training_mode_leaves_global_rng_alone():
    """With dropout active (the authors' profile), masks come from the estimator's generator."""
    torch.manual_seed(0)
    spec = ModelSpec(Cell.lstm, VOCAB, VOCAB, token_inputs=True, hidden_size=6, num_layers=2,
                     embedding_size=4, dropout=0.3)
    model = RNNModel(spec).double().train()
    before = torch.get_rng_state()
    first = run_estimate(model, 5)
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(run_estimate(model, 5).phi, first.phi)
    model.eval()
    assert not np.array_equal(run_estimate(model, 5).phi, first.phi)  # dropout did act
