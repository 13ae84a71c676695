"""CUDA checks (skipped without a GPU; scripts/gpu_check.sh runs them on a lent GPU): cuDNN
gradients and profiles against the CPU, a CLI run, and a run resumed across devices."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from atbptt import adaptive, artbp, train
from atbptt.config import Cell, Style
from atbptt.data import Split
from atbptt.models import ModelSpec, RNNModel
from atbptt.tbptt import Walker, chunk_forward, last_step_loss, sequence_loss
from conftest import run_cli, run_interrupted, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model(cell: Cell) -> RNNModel:
    torch.manual_seed(0)
    return RNNModel(ModelSpec(cell, 11, 11, True, hidden_size=16, num_layers=2, embedding_size=16)).double()


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
    result = run_cli([*tiny, "device=cuda", "method=adaptive", f"hydra.run.dir={run}"], cwd=tmp_path)
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
    overrides = ("model.num_layers=2", "model.dropout=0.2", "method=adaptive", "method.reestimate_every=3",
                 "method.reestimate_steps=null", "epochs=2", "evals_per_epoch=3")
    run_dir = tmp_path / "run"
    run_interrupted(tiny_config("device=cpu", *overrides), run_dir, 2, monkeypatch)
    run_interrupted(tiny_config("device=cuda", *overrides), run_dir, 4, monkeypatch)
    payload = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert payload["cuda_rng"] is not None  # written on CUDA
    assert train.run(tiny_config("device=cpu", *overrides), run_dir) == "finished"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "so far and is resumed" in line]
    assert len(warnings) == 2 and "ran with device=cpu so far and is resumed with device=cuda" in warnings[0]
    assert "ran with device=cuda so far and is resumed with device=cpu" in warnings[1]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["device"] == "cpu" and info["resumed_on_devices"] == ["cuda", "cpu"]
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [r["eval"] for r in rows] == [str(i) for i in range(7)]
    assert all(2 <= int(r["K"]) <= 20 for r in rows)
