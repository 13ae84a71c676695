"""The authors' adaptive procedure (NOTES §3 steps 6–7): how estimates become one K, the lag-0
convention, when K changes, and that diagnostics never change training."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from atbptt import adaptive, train
from atbptt.adaptive import Lag0, average_K, k_hat
from atbptt.config import Cell
from atbptt.controller import AdaptiveTruncation
from atbptt.models import ModelSpec, RNNModel
from atbptt.run import run as run_training
from atbptt.rundir import CHECKPOINT
from conftest import run_interrupted
from conftest import tiny_config as tiny_any_device
from word_lm import WordLM

torch.set_num_threads(1)
VOCAB = 11


def tiny_config(*overrides: str):
    return tiny_any_device("device=cpu", *overrides)


def rows(run_dir: Path, *columns: str) -> list:
    with open(run_dir / "metrics.csv") as f:
        return [tuple(r[c] for c in columns) for r in csv.DictReader(f)]


def lm_and_split(cls="rnn"):
    torch.manual_seed(0)
    if cls == "rnn":  # readout from the state the last step returns (lag 0 = s_W)
        model = RNNModel(ModelSpec(Cell.lstm, VOCAB, VOCAB, True, 8, 2, 8))
    else:  # pytorch/examples' model: reads the output sequence
        model = WordLM("LSTM", VOCAB, 5, 8, 2, dropout=0.0)
    model = model.double()
    ids = torch.randint(0, VOCAB, (300, 4), generator=torch.Generator().manual_seed(1))
    return model, ids[:-1], ids[1:]


# ----------------------------------------------------------------------------- averaging
def test_average_K_takes_the_mean_of_unclamped_values_truncated_then_clamps():
    assert average_K([400, 5, 10], 10, 300) == 138  # int(138.33); clamped first would give 106.7
    assert average_K([12, 13], 10, 300) == 12  # int(12.5): truncated, not rounded
    assert average_K([3, 4], 10, 300) == 10 and average_K([400, 400], 10, 300) == 300
    with pytest.raises(ValueError):
        average_K([], 1, 10)


def test_k_hat_is_the_smallest_K_below_delta_else_the_window():
    rel = np.array([2.0, 0.8, 0.4, 0.05])
    assert [k_hat(rel, d) for d in (1.0, 0.5, 0.1, 0.01)] == [2, 3, 4, 4]


def test_five_estimates_average_their_own_profiles_K_hat():
    """Each of the 5 estimates is a whole estimate on its own windows; K is average_K of their
    unclamped K̂, and the logged δ̂ curve is the mean of theirs (Average.k_hat)."""
    model, x, y = lm_and_split()
    options = dict(window=20, burn_in=4, num_windows=3, loss_fn=nn.CrossEntropyLoss(),
                   k_min=5, k_max=15, deltas=(0.9, 0.5, 0.1))
    est = adaptive.estimate(model.train(), x, y, generator=torch.Generator().manual_seed(4),
                            num_estimates=5, **options)
    # the same five profiles one by one: the seed draw first, then the windows of each
    gen = torch.Generator().manual_seed(4)
    torch.randint(0, 2**62, (1,), generator=gen)
    rels = []
    for _ in range(5):
        prof = adaptive._profile_once(model, x, y, window=20, burn_in=4, num_windows=3,
                                      loss_fn=nn.CrossEntropyLoss(), generator=gen,
                                      device=torch.device("cpu"))
        rels.append(adaptive.relative_bias(prof.phi.numpy(), prof.cum.numpy(), burn_in=4)[1])
    for d in (0.9, 0.5, 0.1):
        singles = [k_hat(r, d) for r in rels]
        assert est.k_hats[d] == singles
        assert est.K_hat[d] == average_K(singles, 5, 15)
    np.testing.assert_allclose(est.rel_bias, np.mean(rels, axis=0))
    pooled = adaptive.estimate(model.train(), x, y, generator=torch.Generator().manual_seed(4),
                               num_estimates=5, average="profiles", **options)
    np.testing.assert_array_equal(pooled.phi, est.phi)  # same profiles, other combination
    assert pooled.K_hat[0.1] == adaptive.choose_K(pooled.rel_bias, 0.1, 5, 15)


def test_one_estimate_is_the_same_under_both_averages():
    model, x, y = lm_and_split()
    kw = dict(window=20, burn_in=4, num_windows=3, loss_fn=nn.CrossEntropyLoss(), k_min=2)
    a, b = (adaptive.estimate(model, x, y, generator=torch.Generator().manual_seed(2),
                              average=avg, **kw) for avg in ("k_hat", "profiles"))
    np.testing.assert_array_equal(a.rel_bias, b.rel_bias)
    assert a.K_hat == b.K_hat


# ----------------------------------------------------------------------------- lag 0
def test_the_authors_lag0_is_the_same_profile_one_lag_later():
    """On the same windows, lag k entering the last step is lag k + 1 after it (s_{W-1-k})."""
    model, x, y = lm_and_split()
    state = model.init_state(3, torch.device("cpu"))
    xs, ys = x[:16, :3], y[:16, :3]
    after = adaptive.grad_norm_profile(model, xs, ys, state, nn.CrossEntropyLoss())
    entering = adaptive.grad_norm_profile(model, xs, ys, state, nn.CrossEntropyLoss(),
                                          lag0="state_entering_step")
    assert after.lag0 == Lag0.state_after_step and entering.lag0 == Lag0.state_entering_step
    torch.testing.assert_close(entering.phi[:-1], after.phi[1:])


def test_lag0_after_step_is_refused_for_a_model_that_reads_the_output_sequence():
    model, x, y = lm_and_split("wordlm")
    state = model.init_hidden(3)
    with pytest.raises(ValueError, match="state_entering_step"):
        adaptive.grad_norm_profile(model, x[:10, :3], y[:10, :3], state, nn.CrossEntropyLoss(),
                                   lag0="state_after_step")


# ----------------------------------------------------------------------------- the schedule
def controller(**kw):
    model, x, y = lm_and_split("wordlm")
    settings = dict(delta=0.5, window=12, burn_in=3, num_windows=4, k_min=2, k_max=10, seed=0)
    return AdaptiveTruncation(model, x, y, nn.CrossEntropyLoss(), **{**settings, **kw})


def test_K0_holds_for_the_first_interval_and_K_changes_only_at_updates():
    ctl = controller(K0=7, reestimate_every=30, num_estimates=3)
    Ks, updates = [], []
    for _ in range(20):
        updates.append(ctl.step(10, seconds=0.0))
        Ks.append(ctl.K)
    assert updates == [i % 3 == 2 for i in range(20)]  # after every 30 time steps
    assert Ks[:2] == [7, 7]
    for i in range(1, 20):
        if not updates[i]:
            assert Ks[i] == Ks[i - 1]
    assert ctl.num_estimates_done == 6 and len(ctl.estimate.k_hats[0.5]) == 3


def test_reestimate_seconds_updates_after_that_much_training():
    ctl = controller(K0=7, reestimate_every=10**9, reestimate_seconds=5.0)
    assert [ctl.step(1, seconds=2.0) for _ in range(5)] == [False, False, True, False, False]
    assert ctl.num_estimates_done == 1 and ctl.seconds_since == 4.0
    state = ctl.state_dict()
    other = controller(K0=3, reestimate_every=10**9, reestimate_seconds=5.0)
    other.load_state_dict(state)
    assert other.step(1, seconds=1.0) and ctl.step(1, seconds=1.0)  # 4 + 1 s: both update
    np.testing.assert_array_equal(other.estimate.phi, ctl.estimate.phi)


def test_a_fresh_estimate_leaves_K_the_schedule_and_the_windows_alone():
    ctl = controller(K0=7, reestimate_every=20)
    twin = controller(K0=7, reestimate_every=20)
    ctl.step(15)
    twin.step(15)
    before = ctl.generator.get_state()
    est = ctl.fresh_estimate(2, torch.Generator().manual_seed(9))
    assert len(est.betas) == 2 and ctl.K == 7 and ctl.since_estimate == 15
    assert torch.equal(ctl.generator.get_state(), before)
    ctl.step(5)
    twin.step(5)
    np.testing.assert_array_equal(ctl.estimate.phi, twin.estimate.phi)


# ----------------------------------------------------------------------------- the runner
LM_LIKE = ("method=adaptive", "method.reestimate_steps=60", "method.num_estimates=3",
           "method.lag0=state_entering_step", "K=5", "delta=0.5", "evals_per_epoch=8",
           "model.dropout=0.2", "model.num_layers=2")


@pytest.mark.usefixtures("torch_state")
def test_logged_estimates_never_change_training(tmp_path):
    """With log_from=fresh the logged estimates and the audit draw their own windows: the K
    trajectory and every loss are the same however many are drawn."""
    quiet, loud = tmp_path / "quiet", tmp_path / "loud"
    assert run_training(tiny_config(*LM_LIKE, "method.log_from=fresh", "method.log_estimates=1"),
                        quiet) == "finished"
    assert run_training(tiny_config(*LM_LIKE, "method.log_from=fresh", "method.log_estimates=3",
                                    "method.audit=true"), loud) == "finished"
    cols = ("eval", "step", "K", "train_loss", "valid_loss", "test_loss")
    assert rows(quiet, *cols) == rows(loud, *cols)
    K = [r[2] for r in rows(quiet, *cols)]
    assert K[:2] == ["5", "5"] and len(set(K)) > 1  # K0 first, then updates
    timing = rows(loud, "estimation_time", "diagnostic_time")
    assert float(timing[-1][1]) > 0 and float(timing[-1][0]) > 0


@pytest.mark.usefixtures("torch_state")
def test_K_changes_only_at_update_points(tmp_path, monkeypatch):
    ks, updated = [], []
    original = train.Trainer.update_K

    def watch(self, steps, seconds):
        before = self.controller.num_estimates_done
        original(self, steps, seconds)
        ks.append(self.progress.K)
        updated.append(self.controller.num_estimates_done > before)

    monkeypatch.setattr(train.Trainer, "update_K", watch)
    assert run_training(tiny_config(*LM_LIKE), tmp_path / "run") == "finished"
    steps_per_chunk = 5  # K new steps per chunk while K = 5
    first = updated.index(True)
    assert first == 60 // steps_per_chunk - 1 and set(ks[:first]) == {5}
    for i in range(1, len(ks)):
        assert updated[i] or ks[i] == ks[i - 1]


@pytest.mark.usefixtures("torch_state")
def test_a_checkpoint_of_the_earlier_layout_resumes_identically(tmp_path, monkeypatch):
    """Earlier checkpoints kept one estimator_rng and the schedule in progress: converted."""
    cfg = tiny_config(*LM_LIKE)
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    assert run_training(cfg, reference) == "finished"
    run_interrupted(cfg, run_dir, 3, monkeypatch)
    payload = torch.load(run_dir / CHECKPOINT, weights_only=True)
    ctl = payload.pop("controller")
    payload.pop("diagnostic_rng")
    payload["estimator_rng"] = ctl["generator"]
    payload["progress"]["steps_since_estimate"] = ctl["since_estimate"]
    torch.save(payload, run_dir / CHECKPOINT)
    assert run_training(cfg, run_dir) == "finished"
    cols = ("eval", "K", "train_loss", "valid_loss")
    assert rows(run_dir, *cols) == rows(reference, *cols)


@pytest.mark.usefixtures("torch_state")
def test_snapshots_keep_the_weights_of_the_first_evaluation_past_each_epoch(tmp_path):
    cfg = tiny_config("snapshot_epochs=[0.3,1]", "evals_per_epoch=4")
    assert run_training(cfg, tmp_path / "run") == "finished"
    shots = sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir())
    assert shots == ["epoch_0.3.pt", "epoch_1.pt"]
    first = torch.load(tmp_path / "run" / "snapshots" / "epoch_0.3.pt", weights_only=True)
    assert first["epoch"] == pytest.approx(0.5) and first["K"] == 5
    model = train.build_model(cfg, train.load_task(cfg.dataset, Path("data")), torch.device("cpu"))
    model.load_state_dict(first["model"])


@pytest.mark.usefixtures("torch_state")
def test_evaluations_never_change_training(tmp_path):
    """More evaluations (with their fresh estimates) leave every shared evaluation as it was:
    a preset with fewer evaluations trains exactly as one with more."""
    few, many = tmp_path / "few", tmp_path / "many"
    fresh = ("method.log_from=fresh", "method.log_estimates=2")
    assert run_training(tiny_config(*LM_LIKE, *fresh, "evals_per_epoch=2"), few) == "finished"
    assert run_training(tiny_config(*LM_LIKE, *fresh, "evals_per_epoch=8"), many) == "finished"
    cols = ("epoch", "step", "K", "valid_loss", "test_loss")
    shared = {r[0]: r for r in rows(many, *cols)}
    assert [shared[r[0]] for r in rows(few, *cols)] == rows(few, *cols)
