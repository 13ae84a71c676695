"""ARTBP: exact unbiasedness by enumerating every truncation draw of a short sequence, the
length distributions, and the relative-variance measure on estimation windows."""
from __future__ import annotations

import math

import pytest
import torch

from atbptt import artbp
from atbptt.artbp import Schedule
from atbptt.config import Cell, Style, TruncationSchedule
from atbptt.data import Split
from atbptt.models import ModelSpec, RNNModel
from atbptt.tbptt import Walker, chunk_forward, last_step_loss, sequence_loss

torch.set_num_threads(1)
T, B, VOCAB = 6, 2, 5
SCHEDULES = {  # mean length 3 (c = 1/3 per step), the paper's length-dependent c_n, stride 2
    "constant": Schedule(3.0),
    "poly": Schedule(3.0, TruncationSchedule.poly, alpha=4.0),
    "stride2": Schedule(3.0, stride=2),
}


def make_model(cell: Cell) -> RNNModel:
    torch.manual_seed(0)
    return RNNModel(ModelSpec(cell, VOCAB, VOCAB, True, hidden_size=4, num_layers=2,
                              embedding_size=3)).double()


def make_split(length: int = T) -> Split:
    ids = torch.randint(0, VOCAB, (length + 1, B), generator=torch.Generator().manual_seed(1))
    return Split(ids[:-1], ids[1:])


def flat_grad(model: RNNModel) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def segmentations(schedule: Schedule, length: int):
    """Every sequence of segment lengths covering ``length`` steps, with its probability."""
    if length == 0:
        return [((), 1.0)]
    return [((first, *rest), p * q) for first, p in artbp.length_distribution(schedule, length)
            for rest, q in segmentations(schedule, length - first)]


def artbp_grad(model: RNNModel, split: Split, schedule: Schedule, lengths) -> torch.Tensor:
    """The gradient accumulated over one epoch's segments (weights held fixed)."""
    model.zero_grad()
    walker = Walker.start(model, B, "cpu")
    for length in lengths:
        loss, steps = artbp.segment_forward(model, split, walker, schedule, length,
                                            sequence_loss(True), "cpu")
        assert steps == length
        loss.backward()
    assert walker.pos == split.length
    return flat_grad(model)


def full_grad(model: RNNModel, split: Split, norm: float) -> torch.Tensor:
    """Full BPTT of the epoch's loss with every step weighted 1/norm (ARTBP's loss scale)."""
    model.zero_grad()
    out, _ = model(split.inputs, model.init_state(B))
    (sequence_loss(True)(out, split.targets) * (split.length / norm)).backward()
    return flat_grad(model)


def expected_grad(model: RNNModel, split: Split, schedule: Schedule) -> torch.Tensor:
    draws = segmentations(schedule, split.length)
    assert math.fsum(p for _, p in draws) == pytest.approx(1.0, abs=1e-12)
    return sum(p * artbp_grad(model, split, schedule, lengths) for lengths, p in draws)


# ----------------------------------------------------------------------------- unbiasedness
@pytest.mark.parametrize("cell", list(Cell))
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_expectation_over_all_draws_equals_full_bptt(cell, name):
    """Unbiasedness, exactly: sum over every segmentation of its probability times its gradient."""
    model, split, schedule = make_model(cell), make_split(), SCHEDULES[name]
    torch.testing.assert_close(expected_grad(model, split, schedule),
                               full_grad(model, split, schedule.mean_length),
                               rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cell", [Cell.lstm, Cell.srnn])
def test_without_compensation_the_expectation_is_biased(cell, monkeypatch):
    """The enumeration detects a bias: random cuts without 1/(1-c) miss long lags."""
    model, split, schedule = make_model(cell), make_split(), SCHEDULES["constant"]
    monkeypatch.setattr(artbp, "compensate", lambda state, factor: state)
    biased = expected_grad(model, split, schedule)
    full = full_grad(model, split, schedule.mean_length)
    assert (biased - full).norm() > 1e-3 * full.norm()


@pytest.mark.parametrize("cell", list(Cell))
def test_c_to_zero_is_full_bptt_over_the_chunk(cell):
    """c = 1e-12: the whole chunk is one segment (probability 1 - 5e-12), compensation 1."""
    model, split = make_model(cell), make_split()
    schedule = Schedule(1e12)
    (length, p), = [(n, q) for n, q in artbp.length_distribution(schedule, T) if q > 1e-9]
    assert length == T and p == pytest.approx(1.0, abs=1e-10)
    got = artbp_grad(model, split, schedule, [T]) * (schedule.mean_length / T)
    torch.testing.assert_close(got, full_grad(model, split, T), rtol=1e-9, atol=1e-14)
    model.zero_grad()  # the same as one 'chunk' TBPTT chunk of K = T
    loss, _ = chunk_forward(model, split, Walker.start(model, B, "cpu"), T, Style.chunk,
                            sequence_loss(True), "cpu")
    loss.backward()
    torch.testing.assert_close(got, flat_grad(model), rtol=1e-9, atol=1e-14)


def test_compensation_is_identity_forward_and_scales_the_state_gradient():
    h = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    out = artbp.compensate((h, c), 1.5)
    assert torch.equal(out[0], h) and torch.equal(out[1], c)
    (out[0].sum() + 2 * out[1].sum()).backward()
    assert (torch.equal(h.grad, torch.full_like(h, 1.5))
            and torch.equal(c.grad, torch.full_like(c, 3.0)))


def test_segment_forward_values_equal_the_fused_forward():
    """Stepping between draw points changes no forward value: the loss is the chunk's mean
    loss times L/K."""
    model, split = make_model(Cell.lstm), make_split()
    loss, _ = artbp.segment_forward(model, split, Walker.start(model, B, "cpu"),
                                    SCHEDULES["constant"], 5, sequence_loss(True), "cpu")
    ref, _ = chunk_forward(model, split, Walker.start(model, B, "cpu"), 5, Style.chunk,
                           sequence_loss(True), "cpu")
    assert float(loss.detach()) == pytest.approx(float(ref.detach()) * 5 / 3, rel=1e-13)
    with pytest.raises(ValueError):
        artbp.segment_forward(model, split, Walker.start(model, B, "cpu"),
                              SCHEDULES["constant"], T + 1, sequence_loss(True), "cpu")


# ----------------------------------------------------------------------------- lengths
@pytest.mark.parametrize("schedule", [Schedule(10.0), Schedule(10.0, TruncationSchedule.poly),
                                      Schedule(10.0, TruncationSchedule.poly, alpha=6.0),
                                      Schedule(10.0, stride=3)])
def test_mean_length_is_K(schedule):
    dist = artbp.length_distribution(schedule, 200_000)
    assert math.fsum(p for _, p in dist) == pytest.approx(1.0, abs=1e-9)
    assert math.fsum(n * p for n, p in dist) == pytest.approx(10.0, rel=1e-4)


def test_constant_schedule_is_geometric_and_poly_has_a_heavier_tail():
    geometric = dict(artbp.length_distribution(Schedule(4.0), 1000))
    assert geometric[1] == pytest.approx(0.25) and geometric[3] == pytest.approx(0.75 ** 2 * 0.25)
    poly = Schedule(4.0, TruncationSchedule.poly)  # c_n = 3 / (2 * 4 + n)
    assert poly.probability(1) == pytest.approx(3 / 9) and poly.factor(2) == pytest.approx(10 / 7)
    tail = dict(artbp.length_distribution(poly, 1000))
    assert sum(p for n, p in tail.items() if n > 40) > 10 * sum(
        p for n, p in geometric.items() if n > 40)


def test_drawn_lengths_follow_the_distribution_and_respect_the_cap():
    schedule = Schedule(5.0, TruncationSchedule.poly, max_length=12)
    g = torch.Generator().manual_seed(0)
    draws = [artbp.draw_length(schedule, 30, g) for _ in range(20_000)]
    dist = dict(artbp.length_distribution(schedule, 30))
    assert max(draws) == 12 and dist[12] > 0
    for n, p in dist.items():
        assert draws.count(n) / len(draws) == pytest.approx(p, abs=0.01)
    assert artbp.draw_length(schedule, 3, g) <= 3  # the end of the split


def test_last_cut_distribution_matches_the_enumeration():
    for schedule in SCHEDULES.values():
        expected = torch.zeros(T, dtype=torch.float64)
        for lengths, p in segmentations(schedule, T):
            expected[T - lengths[-1]] += p
        torch.testing.assert_close(torch.from_numpy(artbp.last_cut_distribution(schedule, T)),
                                   expected, rtol=1e-12, atol=1e-15)


def test_schedule_rejects_bad_parameters():
    with pytest.raises(ValueError):
        Schedule(1.0)  # c = 1: every step cut, no gradient across any transition
    with pytest.raises(ValueError):
        Schedule(4.0, stride=4)
    with pytest.raises(ValueError):
        Schedule(4.0, TruncationSchedule.poly, alpha=2.0)


# ----------------------------------------------------------------------------- windows
def windows(cell: Cell, W: int = 6, S: int = 3):
    model = make_model(cell).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, VOCAB, (W, S), generator=g)
    y = torch.randint(0, VOCAB, (W, S), generator=g)
    with torch.no_grad():
        _, state = model(torch.randint(0, VOCAB, (4, S), generator=g), model.init_state(S))
    return model, x, y, state


@pytest.mark.parametrize("cell", list(Cell))
def test_window_estimate_is_unbiased_and_its_variance_sampled(cell):
    model, x, y, state = windows(cell)
    schedule, loss_fn = Schedule(2.5), last_step_loss(True)
    probs = artbp.last_cut_distribution(schedule, x.shape[0])
    full = artbp.window_gradient(model, x, y, state, loss_fn, None, 0)
    grads = [artbp.window_gradient(model, x, y, state, loss_fn, schedule, a) for a in range(6)]
    torch.testing.assert_close(sum(p * g for p, g in zip(probs, grads)), full,
                               rtol=1e-10, atol=1e-13)
    exact = sum(p * float((g - full).pow(2).sum()) for p, g in zip(probs, grads)) / float(
        full.pow(2).sum())
    sampled = artbp.relative_variance(model, x, y, state, loss_fn, schedule, 4000,
                                      torch.Generator().manual_seed(3))
    assert exact > 1e-3 and sampled == pytest.approx(exact, rel=0.1)
    nearly_full = artbp.relative_variance(model, x, y, state, loss_fn, Schedule(1e9), 8,
                                          torch.Generator().manual_seed(3))
    assert nearly_full < 1e-12
