"""A run in this process: divergence seen at an evaluation, resume with other threads or
from another device's checkpoint, an unusable checkpoint."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

from atbptt import evaluation
from atbptt.metrics import TIME_COLUMNS
from atbptt.run import run as run_training
from atbptt.rundir import CHECKPOINT, RunDirError
from conftest import run_interrupted
from conftest import tiny_config as tiny_any_device

pytestmark = pytest.mark.usefixtures("torch_state")


def tiny_config(*overrides: str):
    """The tiny run on the CPU, also on a machine with a GPU (device=auto would pick it)."""
    return tiny_any_device("device=cpu", *overrides)


def rows(run_dir: Path) -> list:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)]


def info(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


@pytest.mark.parametrize("split", ["valid", "test"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_nonfinite_evaluation_loss_marks_the_run_diverged(tmp_path, monkeypatch, split, value):
    """Training stays finite; only the last evaluation's loss is not (as when the weights
    overflow in the last chunks): the row is logged, perplexity NaN, and the run diverged."""
    evaluate, calls = evaluation.evaluate, []
    target_call = 5 if split == "valid" else 6  # evaluations 0, 1, 2 each evaluate valid, then test

    def last_eval_overflows(*args):
        calls.append(evaluate(*args))
        return value if len(calls) == target_call else calls[-1]

    monkeypatch.setattr(evaluation, "evaluate", last_eval_overflows)
    assert run_training(tiny_config(), tmp_path / "run") == "diverged"
    table, record = rows(tmp_path / "run"), info(tmp_path / "run")
    assert [r["eval"] for r in table] == ["0", "1", "2"]
    assert table[-1][f"{split}_ppl"] == "nan" and table[-1][f"{split}_loss"] == str(value)
    assert record["status"] == "diverged"
    assert record["message"] == (f"diverged at epoch 1.000: {split} loss became {value} "
                                 f"at evaluation 2")


def test_perplexity_of_a_nonfinite_loss_is_nan():
    ppl = evaluation.perplexity
    assert math.isnan(ppl(math.nan)) and math.isnan(ppl(math.inf))
    assert ppl(0.0) == 1.0 and ppl(800.0) == math.inf  # finite, but overflows


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores for threads=2")
def test_resume_with_other_threads_warns_and_is_recorded(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    run_interrupted(tiny_config("threads=1"), run_dir, 2, monkeypatch)
    capsys.readouterr()
    assert run_training(tiny_config("threads=2"), run_dir) == "finished"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert "ran with threads=1 so far and is resumed with threads=2" in warnings[0]
    assert info(run_dir)["resumed_with_threads"] == [2] and info(run_dir)["threads"] == 1
    assert [r["eval"] for r in rows(run_dir)] == ["0", "1", "2"]


def test_a_checkpoint_written_on_cuda_resumes_on_the_cpu(tmp_path, monkeypatch, capsys):
    """As if the run had started on a GPU: the checkpoint carries CUDA RNG states and run.json
    says cuda. On the CPU they are ignored, and the result is an uninterrupted CPU run's."""
    cfg = tiny_config("model.num_layers=2", "model.dropout=0.2", "method=adaptive",
                      "method.reestimate_every=3", "method.reestimate_steps=null")
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    assert run_training(cfg, reference) == "finished"
    run_interrupted(cfg, run_dir, 2, monkeypatch)
    payload = torch.load(run_dir / CHECKPOINT, weights_only=True)
    payload["cuda_rng"] = [torch.zeros(16, dtype=torch.uint8)]
    torch.save(payload, run_dir / CHECKPOINT)
    (run_dir / "run.json").write_text(json.dumps({**info(run_dir), "device": "cuda"}))
    capsys.readouterr()
    assert run_training(cfg, run_dir) == "finished"
    assert "ran with device=cuda so far and is resumed with device=cpu" in capsys.readouterr().err
    assert info(run_dir)["resumed_on_devices"] == ["cpu"]
    assert rows(run_dir) == rows(reference)


@pytest.mark.parametrize("damage", ["truncated", "wrong shapes"])
def test_an_unusable_checkpoint_refuses_the_resume_and_touches_nothing(tmp_path, monkeypatch,
                                                                       damage):
    run_dir = tmp_path / "run"
    run_interrupted(tiny_config(), run_dir, 2, monkeypatch)
    if damage == "truncated":
        data = (run_dir / CHECKPOINT).read_bytes()
        (run_dir / CHECKPOINT).write_bytes(data[:len(data) // 3])
    else:
        payload = torch.load(run_dir / CHECKPOINT, weights_only=True)
        payload["model"] = {k: v[:1] for k, v in payload["model"].items()}
        torch.save(payload, run_dir / CHECKPOINT)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError) as refused:
        run_training(tiny_config(), run_dir)
    message = str(refused.value)
    assert "\n" not in message and str(run_dir / CHECKPOINT) in message and "delete it" in message
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
