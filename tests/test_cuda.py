"""CUDA checks (skipped without a GPU; scripts/gpu_check.sh runs them on a lent GPU): cuDNN
gradients and profiles against the CPU, a CLI run, and a run resumed across devices."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from atbptt import adaptive, artbp
from atbptt.config import Cell, Style
from atbptt.data import Split
from atbptt.models import ModelSpec, RNNModel
from atbptt.run import run as run_training
from atbptt.tbptt import Walker, chunk_forward, last_step_loss, sequence_loss
from conftest import run_cli, run_interrupted, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model(cell: Cell) -> RNNModel:
    torch.manual_seed(0)
    spec = ModelSpec(cell, 11, 11, True, hidden_size=16, num_layers=2, embedding_size=16)
    return RNNModel(spec).double()


@pytest.mark.parametrize("cell", list(Cell))
@pytest.mark.parametrize("style", list(Style))
def test_cudnn_chunk_gradients_match_cpu(cell, style):
    ids = torch.randint(0, 11, (31, 4), generator=torch.Generator().manual_seed(0))
    split = Split(ids[:-1], ids[1:])
    grads = {}
    for device in ("cpu", "cuda"):
        model = _model(cell).to(device)
        walker = Walker.start(model, 4, device)
        for _ in range(3):
            model.zero_grad()
            loss, _ = chunk_forward(model, split, walker, 6, style, sequence_loss(True), device)
            loss.backward()
        grads[device] = [p.grad.cpu() for p in model.parameters()]
    for a, b in zip(grads["cpu"], grads["cuda"]):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("cell", list(Cell))
def test_profile_on_cuda_matches_cpu(cell):
    ids = torch.randint(0, 11, (20, 5), generator=torch.Generator().manual_seed(1))
    out = {}
    for device in ("cpu", "cuda"):
        model = _model(cell).to(device).eval()
        phi, cum = adaptive.grad_norm_profile(model, ids[:-1].to(device), ids[1:].to(device),
                                              model.init_state(5, device), last_step_loss(True))
        out[device] = (phi.cpu(), cum.cpu())
    torch.testing.assert_close(out["cpu"][0], out["cuda"][0], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(out["cpu"][1], out["cuda"][1], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("cell", list(Cell))
def test_artbp_segments_and_window_gradients_on_cuda_match_cpu(cell):
    """Single-step cuDNN calls with the compensation between them; the eval-mode window
    gradient behind the logged variance (cuDNN off there)."""
    ids = torch.randint(0, 11, (31, 4), generator=torch.Generator().manual_seed(0))
    split, schedule = Split(ids[:-1], ids[1:]), artbp.Schedule(4.0)
    grads, windows = {}, {}
    for device in ("cpu", "cuda"):
        model = _model(cell).to(device)
        walker, generator = Walker.start(model, 4, device), torch.Generator().manual_seed(0)
        while walker.pos < split.length:  # the same segments on both devices
            loss, _ = artbp.next_segment(model, split, walker, schedule, sequence_loss(True),
                                         device, generator)
            loss.backward()
        grads[device] = [p.grad.cpu() for p in model.parameters()]
        model.eval()
        windows[device] = artbp.window_gradient(
            model, ids[:12].to(device), ids[1:13].to(device), model.init_state(4, device),
            last_step_loss(True), schedule, 3).cpu()
    for a, b in zip(grads["cpu"], grads["cuda"]):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(windows["cpu"], windows["cuda"], rtol=1e-7, atol=1e-9)


def test_cli_runs_on_cuda(tmp_path, tiny):
    run = tmp_path / "run"
    result = run_cli([*tiny, "device=cuda", "method=adaptive", f"hydra.run.dir={run}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["device"] == "cuda" and info["status"] == "finished"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert all(2 <= int(r["K"]) <= 20 for r in rows)


@pytest.mark.usefixtures("torch_state")
def test_resume_moves_between_cpu_and_cuda(tmp_path, monkeypatch, capsys):
    """A CPU-started run resumes on CUDA (RNG states restored from the checkpoint's CPU copies),
    and its CUDA checkpoint resumes back on the CPU (its CUDA RNG state then unused); each move
    warns once and is recorded, and no evaluation is lost or repeated."""
    overrides = ("model.num_layers=2", "model.dropout=0.2", "method=adaptive",
                 "method.reestimate_every=3", "method.reestimate_steps=null", "epochs=2",
                 "evals_per_epoch=3")
    run_dir = tmp_path / "run"
    run_interrupted(tiny_config("device=cpu", *overrides), run_dir, 2, monkeypatch)
    run_interrupted(tiny_config("device=cuda", *overrides), run_dir, 4, monkeypatch)
    payload = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert payload["cuda_rng"] is not None  # written on CUDA
    assert run_training(tiny_config("device=cpu", *overrides), run_dir) == "finished"
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if "so far and is resumed" in line]
    assert len(warnings) == 2
    assert "ran with device=cpu so far and is resumed with device=cuda" in warnings[0]
    assert "ran with device=cuda so far and is resumed with device=cpu" in warnings[1]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["device"] == "cpu" and info["resumed_on_devices"] == ["cuda", "cpu"]
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [r["eval"] for r in rows] == [str(i) for i in range(7)]
    assert all(2 <= int(r["K"]) <= 20 for r in rows)


# ----------------------------------------------------------------------------- speed paths
def _graph_setup(style: Style, dropout: float = 0.0, capture=None):
    from atbptt import graphs

    torch.manual_seed(0)
    model = RNNModel(ModelSpec(Cell.lstm, 50, 50, True, hidden_size=32, num_layers=1,
                               embedding_size=32, dropout=dropout, tie_weights=True)).cuda()
    steps = graphs.StepGraphs(model, list(model.parameters()), style=style,
                              loss_fn=sequence_loss(True), lr=lambda K: 0.5 * K ** 0.5, clip=1.0,
                              weight_decay=1e-5, device=torch.device("cuda"), capacity=2,
                              capture=capture)
    return model, steps


def _run_graphed(style: Style, schedule, use_graphs: bool, bf16: bool = False):
    from atbptt import graphs

    ids = torch.randint(0, 50, (121, 8), generator=torch.Generator().manual_seed(2))
    split = Split(ids[:-1], ids[1:])
    capture = graphs.cuda_capture() if use_graphs else graphs.eager_capture
    model, steps = _graph_setup(style, capture=capture)
    steps.bf16 = bf16
    walker, losses = Walker.start(model, 8, "cuda"), []
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=1e-5)
    for K in schedule:
        if walker.pos >= split.length:
            walker = Walker.start(model, 8, "cuda")
        out = steps.step(split, walker, K)
        if out is None:  # the eager step, as the Trainer's
            optimizer.zero_grad(set_to_none=True)
            with graphs.autocast(torch.device("cuda"), bf16):
                loss, _ = chunk_forward(model, split, walker, K, style, sequence_loss(True), "cuda")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0 / K)
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * K ** 0.5
            optimizer.step()
            out = (loss.detach(), K)
        losses.append(float(out[0]))
    return losses, [p.detach().cpu() for p in model.parameters()], steps


@pytest.mark.parametrize("style", list(Style))
def test_cuda_graphs_train_as_eager_steps(style):
    """Real graphs (capture, replay, per-K cache) against the same step run eagerly on the same
    buffers: the same losses and weights to float tolerance (no dropout)."""
    schedule = [5] * 8 + [8] * 5 + [5] * 6
    eager, eager_params, _ = _run_graphed(style, schedule, False)
    graphed, graphed_params, steps = _run_graphed(style, schedule, True)
    assert steps.replays > len(schedule) // 2 and steps.captures == 2
    assert graphed == pytest.approx(eager, rel=1e-4, abs=1e-5)
    for a, b in zip(graphed_params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_cuda_graph_replay_never_waits_for_the_host():
    from atbptt import graphs

    ids = torch.randint(0, 50, (121, 8), generator=torch.Generator().manual_seed(2))
    split = Split(ids[:-1], ids[1:])
    model, steps = _graph_setup(Style.overlap, dropout=0.2, capture=graphs.cuda_capture())
    walker = Walker(10, 6, tuple(s.cuda() for s in model.init_state(8)))
    steps.step(split, walker, 5)  # capture (host work allowed), then replay
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            loss, _ = steps.step(split, walker, 5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item() and steps.replays == 6


def test_bf16_autocast_step_stays_close_to_float32():
    schedule = [5] * 10
    full, _, _ = _run_graphed(Style.overlap, schedule, True)
    half, _, _ = _run_graphed(Style.overlap, schedule, True, bf16=True)
    assert half == pytest.approx(full, rel=3e-2)


def test_cli_runs_with_cuda_graphs(tmp_path, tiny):
    run = tmp_path / "run"
    result = run_cli([*tiny, "device=cuda", "cuda.graphs=true", "method=adaptive",
                      f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_estimates_together_on_cuda_match_separate_passes():
    model = _model(Cell.lstm).cuda().eval()
    ids = torch.randint(0, 11, (200, 6), generator=torch.Generator().manual_seed(3))
    ests = [adaptive.estimate(model, ids[:-1], ids[1:], window=20, burn_in=4, num_windows=5,
                              num_estimates=4, loss_fn=last_step_loss(True),
                              generator=torch.Generator().manual_seed(0), batch_estimates=b)
            for b in (False, True)]
    torch.testing.assert_close(torch.from_numpy(ests[1].phi), torch.from_numpy(ests[0].phi),
                               rtol=1e-10, atol=0)
    assert ests[1].K_hat == ests[0].K_hat


@pytest.mark.parametrize("cell", list(Cell))
def test_artbp_fused_on_cuda_matches_stepwise(cell):
    """The CUDA path (fused kernel forward, gates recomputed) against the stepwise compensation."""
    ids = torch.randint(0, 11, (10, 4), generator=torch.Generator().manual_seed(0)).cuda()
    model, schedule = _model(cell).cuda(), artbp.Schedule(3.0)
    grads = {}
    for fused in (False, True):
        model.zero_grad()
        hidden, _ = artbp.run_segment(model, model.embed(ids), model.init_state(4, "cuda"),
                                      schedule, fused)
        (hidden ** 2).sum().backward()
        grads[fused] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
