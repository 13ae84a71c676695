"""ARTBP through the fused kernel (``atbptt.artbp_fused``): the same gradients as the stepwise
compensation, the same random draws, and the cases it leaves to the stepwise path. (The exact
unbiasedness over every draw, tests/test_artbp.py, runs through the fused path.)"""
from __future__ import annotations

import pytest
import torch

from atbptt import artbp, artbp_fused
from atbptt.artbp import Schedule
from atbptt.config import Cell, TruncationSchedule
from atbptt.data import Split
from atbptt.models import ModelSpec, RNNModel
from atbptt.tbptt import Walker, sequence_loss

torch.set_num_threads(1)
VOCAB = 7
SCHEDULES = [Schedule(3.0), Schedule(4.0, TruncationSchedule.poly), Schedule(3.0, stride=2)]


def model_of(cell: Cell, layers: int = 2, dropout: float = 0.0, dtype=torch.float64) -> RNNModel:
    torch.manual_seed(0)
    return RNNModel(ModelSpec(cell, VOCAB, VOCAB, True, hidden_size=5, num_layers=layers,
                              embedding_size=3, dropout=dropout)).to(dtype)


def segment_grads(model: RNNModel, ids, state, schedule, fused: bool):
    """Gradients of a loss on every output and on the last state (h and c), with respect to
    the parameters and the segment's initial state; and the outputs."""
    state = tuple(s.clone().requires_grad_() for s in state) if isinstance(state, tuple) \
        else state.clone().requires_grad_()
    hidden, last = artbp.run_segment(model, model.embed(ids), state, schedule, fused)
    tensors = last if isinstance(last, tuple) else (last,)
    loss = (hidden ** 2).sum() + sum((0.3 + k) * t.sum() for k, t in enumerate(tensors))
    leaves = [*model.encoder.parameters(), *model.core.parameters(),
              *(state if isinstance(state, tuple) else (state,))]
    return torch.autograd.grad(loss, leaves), hidden.detach(), [t.detach() for t in tensors]


def random_state(model: RNNModel, batch: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(4)
    shape = (model.spec.num_layers, batch, model.spec.hidden_size)
    h = torch.randn(shape, generator=g, dtype=dtype)
    return (h, torch.randn(shape, generator=g, dtype=dtype)) if model.is_lstm else h


@pytest.mark.parametrize("cell", list(Cell))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=["constant", "poly", "stride2"])
def test_fused_equals_stepwise_compensation(cell, layers, schedule):
    model = model_of(cell, layers)
    ids = torch.randint(0, VOCAB, (9, 4), generator=torch.Generator().manual_seed(1))
    state = random_state(model, 4)
    stepwise, out_s, last_s = segment_grads(model, ids, state, schedule, False)
    fused, out_f, last_f = segment_grads(model, ids, state, schedule, True)
    torch.testing.assert_close(out_f, out_s, rtol=1e-12, atol=1e-14)
    for a, b in zip(last_f, last_s):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(fused, stepwise):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", list(Cell))
def test_fused_in_float32_agrees_to_rounding(cell):
    model = model_of(cell, 1, dtype=torch.float32)
    ids = torch.randint(0, VOCAB, (30, 8), generator=torch.Generator().manual_seed(2))
    state = random_state(model, 8, torch.float32)
    stepwise, _, _ = segment_grads(model, ids, state, Schedule(10.0), False)
    fused, _, _ = segment_grads(model, ids, state, Schedule(10.0), True)
    for a, b in zip(fused, stepwise):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=1e-5)


def test_training_draws_the_same_random_numbers():
    """Segments drawn from the global RNG, dropout on the embedding and the decoder: the fused
    run consumes the RNG exactly as the stepwise one (the same segments, the same masks)."""
    ids = torch.randint(0, VOCAB, (61, 3), generator=torch.Generator().manual_seed(3))
    split, schedule, runs = Split(ids[:-1], ids[1:]), Schedule(6.0), {}
    for fused in (False, True):
        model = model_of(Cell.lstm, 1, dropout=0.4)
        walker, lengths, losses = Walker.start(model, 3, "cpu"), [], []
        torch.manual_seed(11)
        while walker.pos < split.length:
            model.zero_grad()
            loss, steps = artbp.next_segment(model, split, walker, schedule,
                                             sequence_loss(True), "cpu", fused=fused)
            loss.backward()
            lengths.append(steps)
            losses.append(float(loss.detach()))
        runs[fused] = (lengths, losses, torch.get_rng_state(),
                       [p.grad.clone() for p in model.parameters()])
    assert runs[True][0] == runs[False][0] and len(runs[True][0]) > 5
    assert runs[True][1] == pytest.approx(runs[False][1], rel=1e-12)
    assert torch.equal(runs[True][2], runs[False][2])
    for a, b in zip(runs[True][3], runs[False][3]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_step_factors_put_the_compensation_at_the_draw_points():
    c = Schedule(4.0)
    assert artbp.step_factors(c, 4) == [1.0, 4 / 3, 4 / 3, 4 / 3]
    strided = Schedule(4.0, stride=2)  # c = 1/2 per draw point, every second step
    assert artbp.step_factors(strided, 5) == [1.0, 1.0, 2.0, 1.0, 2.0]
    poly = Schedule(4.0, TruncationSchedule.poly)
    assert artbp.step_factors(poly, 3) == pytest.approx([1.0, poly.factor(1), poly.factor(2)])
    assert artbp.step_factors(c, 1) == [1.0]


def test_unsupported_cores_run_stepwise():
    dropout_between_layers = model_of(Cell.lstm, 2, dropout=0.3).train()
    assert not artbp_fused.supported(dropout_between_layers.core)
    assert artbp_fused.supported(dropout_between_layers.eval().core)
    assert not artbp_fused.supported(torch.nn.RNN(3, 4, nonlinearity="relu"))
    assert not artbp_fused.supported(torch.nn.LSTM(3, 4, proj_size=2))
    assert not artbp_fused.supported(torch.nn.GRU(3, 4, bidirectional=True))
    relu = torch.nn.RNN(3, 4, nonlinearity="relu").double()
    with pytest.raises(ValueError, match="cannot run fused"):
        artbp_fused.fused_core(relu, torch.zeros(2, 1, 3, dtype=torch.float64),
                               torch.zeros(1, 1, 4, dtype=torch.float64), [1.0, 1.0])
    model = model_of(Cell.gru, 1)
    with pytest.raises(ValueError, match="3 factors for a segment of 2 steps"):
        artbp_fused.fused_core(model.core, torch.zeros(2, 1, 3, dtype=torch.float64),
                               model.init_state(1), [1.0, 1.0, 1.0])


@pytest.mark.parametrize("cell", [Cell.lstm, Cell.gru])
def test_cores_without_biases(cell):
    torch.manual_seed(0)
    core = (torch.nn.LSTM if cell == Cell.lstm else torch.nn.GRU)(3, 4, bias=False).double()
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.zeros(1, 2, 4, dtype=torch.float64)
    state = (h, h.clone()) if cell == Cell.lstm else h
    out, _ = artbp_fused.fused_core(core, x, state, [1.0] + [1.5] * 5)
    grads = torch.autograd.grad(out.sum(), [x, *core.parameters()])
    steps, s = [], state
    for t in range(6):  # the stepwise reference: compensate before every step but the first
        if t > 0:
            s = artbp.compensate(s, 1.5)
        o, s = core(x[t:t + 1], s)
        steps.append(o)
    ref = torch.autograd.grad(torch.cat(steps).sum(), [x, *core.parameters()])
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- sliced readout
@pytest.mark.parametrize("classification", [True, False])
def test_sliced_loss_equals_the_one_shot_loss(classification):
    """Value and gradients (hidden states, the decoder's weight tied to an embedding, bias)."""
    from atbptt import readout
    from atbptt.tbptt import sequence_loss

    torch.manual_seed(0)
    V = 7 if classification else 3
    decoder = torch.nn.Linear(5, V).double()
    embedding = torch.nn.Embedding(V, 5).double()
    if classification:
        decoder.weight = embedding.weight
    hidden = torch.randn(11, 4, 5, dtype=torch.float64, requires_grad=True)
    y = (torch.randint(0, V, (11, 4)) if classification
         else torch.randn(11, 4, V, dtype=torch.float64))
    loss_fn, leaves = sequence_loss(classification), [hidden, *decoder.parameters()]
    ref = loss_fn(decoder(hidden), y)
    ref_grads = torch.autograd.grad(1.7 * ref, leaves)
    for steps in (1, 3, 11, 20):
        got = readout.sliced_loss(decoder, hidden, y, loss_fn, steps)
        assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-14)
        for a, b in zip(torch.autograd.grad(1.7 * got, leaves), ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="steps=0"):
        readout.sliced_loss(decoder, hidden, y, loss_fn, 0)
    assert readout.slice_steps(32, 10_000) == 13 and readout.slice_steps(10**4, 10**4) == 1


@pytest.mark.parametrize("cell", list(Cell))
def test_unbiased_over_every_draw_with_sliced_readout(cell, monkeypatch):
    """tests/test_artbp.py's enumeration with segments decoded two steps at a time."""
    from test_artbp import SCHEDULES as EXACT
    from test_artbp import expected_grad, full_grad, make_model, make_split

    from atbptt import readout

    monkeypatch.setattr(readout, "SLICE_ELEMENTS", 2 * 2 * 5)  # B = 2, vocabulary 5
    model, split = make_model(cell), make_split()
    for schedule in EXACT.values():
        torch.testing.assert_close(expected_grad(model, split, schedule),
                                   full_grad(model, split, schedule.mean_length),
                                   rtol=1e-10, atol=1e-13)
