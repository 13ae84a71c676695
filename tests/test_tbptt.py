"""Exact-gradient tests for TBPTT: each style backpropagates exactly the lags it promises."""
from __future__ import annotations

import pytest
import torch

from atbptt.config import Cell, Style
from atbptt.data import Split
from atbptt.models import ModelSpec, RNNModel, detach_state
from atbptt.tbptt import Walker, chunk_forward, evaluate, sequence_loss

torch.set_num_threads(1)
T, B, VOCAB = 24, 3, 7


def make_model(cell: Cell, layers: int = 2) -> RNNModel:
    torch.manual_seed(0)
    model = RNNModel(ModelSpec(cell, VOCAB, VOCAB, True, hidden_size=6, num_layers=layers,
                               embedding_size=5)).double()
    return model


def make_split(length: int = T) -> Split:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (length + 1, B), generator=g)
    return Split(ids[:-1], ids[1:])


def grads(model: RNNModel) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def states_before(model: RNNModel, split: Split) -> list:
    """state_before[p]: the state before x[p], from a full no-grad forward (same parameters)."""
    states = [model.init_state(B)]
    with torch.no_grad():
        for t in range(split.length):
            _, s = model.recur(split.inputs[t:t + 1], states[-1])
            states.append(s)
    return states


def brute_force(model: RNNModel, split: Split, pos: int, K: int, lags_of) -> list[torch.Tensor]:
    """Sum over the chunk's loss terms, term t backpropagated through exactly lags_of(t) steps."""
    model.zero_grad()
    states = states_before(model, split)
    loss_fn = sequence_loss(True)
    for t in range(pos, pos + K):
        start = t - lags_of(t) + 1
        state = detach_state(states[start])
        out, _ = model(split.inputs[start:t + 1], state)
        # the chunk's loss is a mean over its K steps: weight each term by 1/K
        (loss_fn(out[-1:], split.targets[t:t + 1]) / K).backward()
    return grads(model)


def chunk_grads(model: RNNModel, split: Split, walker: Walker, K: int, style: Style) -> list:
    model.zero_grad()
    loss, _ = chunk_forward(model, split, walker, K, style, sequence_loss(True), "cpu")
    loss.backward()
    return grads(model)


def assert_close(a: list, b: list) -> None:
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cell", list(Cell))
@pytest.mark.parametrize("style", list(Style))
def test_tbptt_with_K_at_least_T_equals_full_bptt(cell, style):
    model, split = make_model(cell), make_split()
    got = chunk_grads(model, split, Walker.start(model, B, "cpu"), T + 5, style)
    model.zero_grad()
    out, _ = model(split.inputs, model.init_state(B))
    sequence_loss(True)(out, split.targets).backward()
    assert_close(got, grads(model))


@pytest.mark.parametrize("cell", list(Cell))
def test_chunk_style_lags(cell):
    """'chunk': the loss at position j of a chunk (0-based) gets j+1 lags."""
    model, split, K = make_model(cell), make_split(), 5
    walker = Walker.start(model, B, "cpu")
    chunk_grads(model, split, walker, K, Style.chunk)  # chunk 0
    chunk_grads(model, split, walker, K, Style.chunk)  # chunk 1
    got = chunk_grads(model, split, walker, K, Style.chunk)  # chunk 2: steps [10, 15)
    assert_close(got, brute_force(model, split, 2 * K, K, lambda t: t - 2 * K + 1))


@pytest.mark.parametrize("cell", list(Cell))
def test_overlap_style_lags(cell):
    """'overlap': chunk i starts at iK-(K-1); the term at t gets t - iK + K >= K lags."""
    model, split, K = make_model(cell), make_split(), 4
    walker = Walker.start(model, B, "cpu")
    for _ in range(3):
        chunk_grads(model, split, walker, K, Style.overlap)
    pos = walker.pos
    got = chunk_grads(model, split, walker, K, Style.overlap)  # steps [12, 16)
    assert pos == 3 * K
    assert_close(got, brute_force(model, split, pos, K, lambda t: t - pos + K))


@pytest.mark.parametrize("cell", [Cell.lstm, Cell.srnn])
def test_overlap_when_K_changes(cell):
    """K shrinking: the carried state is moved forward without gradient; K growing: the
    burn-in starts at the carried state (shorter once), never before it."""
    model, split = make_model(cell), make_split()
    walker = Walker.start(model, B, "cpu")
    chunk_grads(model, split, walker, 6, Style.overlap)  # steps [0, 6), anchor at 1
    chunk_grads(model, split, walker, 6, Style.overlap)  # steps [6, 12), anchor at 7
    got = chunk_grads(model, split, walker, 3, Style.overlap)  # steps [12, 15) from 10
    assert_close(got, brute_force(model, split, 12, 3, lambda t: t - 12 + 3))
    got = chunk_grads(model, split, walker, 8, Style.overlap)  # steps [15, 23) from anchor 13
    assert_close(got, brute_force(model, split, 15, 8, lambda t: t - 13 + 1))


def test_overlap_first_chunk_and_end_of_split():
    model, split = make_model(Cell.gru), make_split(length=10)
    walker = Walker.start(model, B, "cpu")
    got = chunk_grads(model, split, walker, 4, Style.overlap)  # no history before step 0
    assert_close(got, brute_force(model, split, 0, 4, lambda t: t + 1))
    chunk_grads(model, split, walker, 4, Style.overlap)
    loss, steps = chunk_forward(model, split, walker, 4, Style.overlap, sequence_loss(True), "cpu")
    assert steps == 2 and walker.pos == 10  # the last chunk is cut at the end of the split


def test_decoding_burn_in_does_not_change_gradients():
    model, split = make_model(Cell.lstm), make_split()
    w1, w2 = Walker.start(model, B, "cpu"), Walker.start(model, B, "cpu")
    for _ in range(3):
        a = chunk_grads(model, split, w1, 5, Style.overlap)
        model.zero_grad()
        loss, _ = chunk_forward(model, split, w2, 5, Style.overlap, sequence_loss(True), "cpu",
                                decode_burn_in=True)
        loss.backward()
        assert_close(a, grads(model))


def test_evaluate_carries_state_across_chunks():
    model, split = make_model(Cell.lstm), make_split()
    loss_fn = sequence_loss(True)
    with torch.no_grad():
        out, _ = model(split.inputs, model.init_state(B))
        full = float(loss_fn(out, split.targets))
    for chunk in (5, 7, 100):
        assert evaluate(model, split, chunk, loss_fn, "cpu") == pytest.approx(full, rel=1e-12)


@pytest.mark.parametrize("dtype,n", [(torch.float64, 40), (torch.float32, 40), (torch.float64, 1)])
def test_fused_cross_entropy_equals_torch(dtype, n):
    """The fused loss has F.cross_entropy's value and gradient (to rounding), and refuses a
    second backward through a retained graph and double backward (its backward overwrites
    what it saved)."""
    import torch.nn.functional as F
    from atbptt.tbptt import cross_entropy
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(n, 11, generator=g, dtype=dtype).mul_(4).requires_grad_()
    target = torch.randint(0, 11, (n,), generator=g)
    target[:5] = target[0]  # repeated classes in one column
    ours = cross_entropy(logits, target.int())  # int32 ids are taken too
    (g_ours,) = torch.autograd.grad(3.0 * ours, logits)
    ref = F.cross_entropy(logits, target)
    (g_ref,) = torch.autograd.grad(3.0 * ref, logits)
    tol = 1e-14 if dtype == torch.float64 else 1e-6
    assert torch.allclose(ours, ref, rtol=tol, atol=tol)
    assert torch.allclose(g_ours, g_ref, rtol=tol, atol=tol)
    loss = cross_entropy(logits, target)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError):
        loss.backward()
    loss = cross_entropy(logits, target)
    (g1,) = torch.autograd.grad(loss, logits, create_graph=True)
    with pytest.raises(RuntimeError):
        g1.sum().backward()


@pytest.mark.parametrize("style", [Style.overlap, Style.chunk])
def test_training_chunk_with_fused_loss_equals_torch_loss(style):
    """A whole training chunk (tied embedding/decoder, dropout, one embedding per window):
    the same parameter gradients with the fused loss as with torch's."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    model = RNNModel(ModelSpec(Cell.lstm, VOCAB, VOCAB, True, hidden_size=6, num_layers=2,
                               embedding_size=6, dropout=0.3, tie_weights=True)).double()
    split = make_split(30)

    def torch_loss(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    result = []
    for loss_fn in (sequence_loss(True), torch_loss):
        model.zero_grad()
        walker = Walker.start(model, B, "cpu")
        torch.manual_seed(7)  # the same dropout masks for both
        for _ in range(3):
            loss, _ = chunk_forward(model, split, walker, 5, style, loss_fn, "cpu")
            loss.backward()
        result.append(grads(model))
    for ours, ref in zip(*result):
        assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-14)
