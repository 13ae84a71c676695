"""The graphed training step's logic on the CPU (``atbptt.graphs`` with ``eager_capture``):
static buffers, which steps replay, the per-K cache, fallbacks, the switch. Replaying the step
function on its buffers must train exactly as the eager step (bit for bit). The same checks on
a GPU, with real graphs, are in tests/test_cuda.py."""
from __future__ import annotations

import pytest
import torch

from atbptt import graphs, train
from atbptt.config import Cell, ConfigError, Style
from atbptt.data import Split
from atbptt.models import ModelSpec, RNNModel
from atbptt.tbptt import Walker, chunk_forward, sequence_loss
from conftest import checked_config, tiny_config

torch.set_num_threads(1)
VOCAB, B = 9, 3
LR, CLIP, WD = 0.5, 1.0, 1e-3


def model_of(dropout: float = 0.3) -> RNNModel:
    torch.manual_seed(0)
    return RNNModel(ModelSpec(Cell.lstm, VOCAB, VOCAB, True, hidden_size=6, num_layers=2,
                              embedding_size=5, dropout=dropout))


def split_of(length: int = 60) -> Split:
    ids = torch.randint(0, VOCAB, (length + 1, B), generator=torch.Generator().manual_seed(1))
    return Split(ids[:-1], ids[1:])


def lr(K: int) -> float:
    return LR * K ** 0.5


def eager_step(model, optimizer, split, walker, K, style):
    optimizer.zero_grad(set_to_none=True)
    loss, steps = chunk_forward(model, split, walker, K, style, sequence_loss(True), "cpu")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP / K)
    for group in optimizer.param_groups:
        group["lr"] = lr(K)
    optimizer.step()
    return loss.detach(), steps


def step_graphs(model, style, capacity=4, capture=graphs.eager_capture, fallback=False):
    return graphs.StepGraphs(model, list(model.parameters()), style=style,
                             loss_fn=sequence_loss(True), lr=lr, clip=CLIP, weight_decay=WD,
                             device=torch.device("cpu"), capacity=capacity, capture=capture,
                             fallback=fallback)


def train_both(style, schedule):
    """The same K schedule (K per step; a new epoch when the split ends) eagerly and graphed."""
    split, results = split_of(), {}
    for use_graphs in (False, True):
        model = model_of()
        optimizer = torch.optim.SGD(model.parameters(), lr=lr(schedule[0]), weight_decay=WD)
        steps = step_graphs(model, style, capacity=2) if use_graphs else None
        walker, losses, kinds = Walker.start(model, B, "cpu"), [], []
        torch.manual_seed(5)  # dropout masks
        for K in schedule:
            if walker.pos >= split.length:
                walker = Walker.start(model, B, "cpu")
            out = steps.step(split, walker, K) if steps is not None else None
            kinds.append(out is not None)
            if out is None:
                out = eager_step(model, optimizer, split, walker, K, style)
            losses.append(float(out[0]))
        results[use_graphs] = (losses, [p.detach().clone() for p in model.parameters()],
                               walker, kinds, steps)
    return results


@pytest.mark.parametrize("style", list(Style))
def test_replayed_steps_train_exactly_as_eager_steps(style):
    schedule = [4] * 6 + [6] * 4 + [3] * 4 + [4] * 6  # K changes; a new epoch at step 15
    eager, graphed = train_both(style, schedule)[False], train_both(style, schedule)[True]
    assert graphed[0] == eager[0]  # losses, bit for bit
    for a, b in zip(graphed[1], eager[1]):
        assert torch.equal(a, b)
    assert (graphed[2].pos, graphed[2].anchor) == (eager[2].pos, eager[2].anchor)
    assert torch.equal(graphed[2].state[0], eager[2].state[0])
    replayed, steps = graphed[3], graphed[4]
    assert steps.replays == sum(replayed) > 0
    if style == Style.overlap:  # an epoch's first step, and after K changed, run eagerly
        assert [i for i, r in enumerate(replayed) if not r] == [0, 6, 10, 14]
    else:  # every chunk style step has the steady shape (the split is 5 x 12 steps)
        assert all(replayed)
    assert list(steps.cache) == [3, 4] and steps.captures == 4  # 4, 6, 3, 4 again (evicted)


def test_which_steps_have_the_steady_shape():
    steps = step_graphs(model_of(), Style.overlap)
    state = model_of().init_state(B)
    assert not steps.eligible(Walker(0, 0, state), 5, 60)  # epoch start: short burn-in
    assert steps.eligible(Walker(10, 6, state), 5, 60)
    assert not steps.eligible(Walker(10, 7, state), 5, 60)  # K changed: anchor elsewhere
    assert not steps.eligible(Walker(56, 52, state), 5, 60)  # the split's last, short chunk
    chunk = step_graphs(model_of(), Style.chunk)
    assert chunk.eligible(Walker(0, 0, state), 5, 60)
    assert not chunk.eligible(Walker(57, 57, state), 5, 60)


def test_a_failed_capture_falls_back_or_raises(capsys):
    def broken(body, warm):
        raise RuntimeError("operation not permitted when stream is capturing")

    model, split = model_of(), split_of()
    walker = Walker(10, 6, model.init_state(B))
    with pytest.raises(RuntimeError, match="capturing"):
        step_graphs(model, Style.overlap, capture=broken).step(split, walker, 5)
    auto = step_graphs(model, Style.overlap, capture=broken, fallback=True)
    assert auto.step(split, walker, 5) is None and auto.disabled and walker.pos == 10
    assert "training eagerly" in capsys.readouterr().err
    assert auto.step(split, walker, 5) is None  # stays eager, no second attempt


def test_sgd_step_is_torch_sgd():
    torch.manual_seed(0)
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    for p in params:
        p.grad = torch.randn_like(p)
    for foreach in (False, True):
        ref = [p.detach().clone().requires_grad_() for p in params]
        for r, p in zip(ref, params):
            r.grad = p.grad.clone()
        torch.optim.SGD(ref, lr=0.3, weight_decay=0.01, foreach=foreach).step()
        mine = [p.detach().clone().requires_grad_() for p in params]
        for m, p in zip(mine, params):
            m.grad = p.grad.clone()
        with torch.no_grad():
            graphs.sgd_step_(mine, 0.3, 0.01)
        assert all(torch.equal(a, b) for a, b in zip(mine, ref))


def test_switch_and_its_errors():
    cpu = torch.device("cpu")
    assert not graphs.wanted(tiny_config(), cpu)  # auto: never on the CPU
    assert not graphs.wanted(tiny_config("cuda.graphs=false"), torch.device("cuda"))
    assert graphs.wanted(tiny_config(), torch.device("cuda"))
    assert not graphs.wanted(tiny_config("method=artbp", "K=5"), torch.device("cuda"))
    with pytest.raises(ConfigError, match=r"^cuda.graphs=true needs a CUDA device"):
        graphs.wanted(tiny_config("cuda.graphs=true"), cpu)
    with pytest.raises(ConfigError, match=r"^cuda.bf16=true needs a CUDA device"):
        graphs.wanted(tiny_config("cuda.bf16=true"), cpu)
    with pytest.raises(ConfigError, match=r"^cuda.graphs=True is not allowed; cuda.graphs must "
                                          r"be null or false for method=artbp"):
        checked_config("method=artbp", "K=5", "cuda.graphs=true")
    with pytest.raises(ConfigError, match=r"^cuda.graph_cache=0 is not allowed"):
        checked_config("cuda.graph_cache=0")
    with pytest.raises(ValueError, match="capacity=0"):
        step_graphs(model_of(), Style.chunk, capacity=0)


@pytest.mark.usefixtures("torch_state")
def test_trainer_steps_through_the_graphs(tmp_path):
    """The run's own step: with the graphs (replayed eagerly) it trains as without them."""
    cfg = tiny_config("model.dropout=0.2", "model.num_layers=2")
    params = {}
    for use_graphs in (False, True):
        data = train.load_task(cfg.dataset)
        model = train.build_model(cfg, data, torch.device("cpu"))
        trainer = train.Trainer(cfg, tmp_path / str(use_graphs), data, model, torch.device("cpu"))
        assert trainer.graphs is None  # auto: eager on the CPU
        if use_graphs:
            trainer.graphs = graphs.build(cfg, model, torch.device("cpu"), trainer.loss_fn,
                                          trainer.lr, capture=graphs.eager_capture)
        torch.manual_seed(3)
        losses = [float(trainer.train_chunk()) for _ in range(12)]
        params[use_graphs] = (losses, [p.detach().clone() for p in model.parameters()],
                              trainer.progress.tokens)
    assert params[True][0] == params[False][0] and params[True][2] == params[False][2]
    assert all(torch.equal(a, b) for a, b in zip(params[True][1], params[False][1]))
    assert trainer.graphs.replays == 11  # all but the epoch's first chunk
