"""atbptt.lightning on a tiny word corpus: exact gradients for fixed K and ARTBP against the
project's own code, the adaptive K̂ of the public controller, carried-state validation, and
resuming from Lightning's own checkpoints."""
from __future__ import annotations

import copy
import csv
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning.pytorch", reason="the lightning extra is not installed")

from conftest import REPO, SHARED_DATA  # noqa: E402

from atbptt import artbp  # noqa: E402
from atbptt.config import Cell  # noqa: E402
from atbptt.controller import AdaptiveTruncation  # noqa: E402
from atbptt.data import Split, lm_split  # noqa: E402
from atbptt.lightning import ARTBP, Adaptive, Fixed, TBPTTMixin, stream_loader  # noqa: E402
from atbptt.models import ModelSpec, RNNModel  # noqa: E402
from atbptt.tbptt import Walker  # noqa: E402

TEXT = ("the cat sat on the mat and the dog sat on the log . a cat and a dog met on a mat . "
        "the log was on the mat and the cat was on the log . ") * 4


def corpus(streams: int = 3):
    words = TEXT.split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    split = lm_split(torch.tensor([vocab[w] for w in words]), streams)
    return split, len(vocab)


def make_net(vocab: int, seed: int = 0, cell: Cell = Cell.lstm) -> RNNModel:
    torch.manual_seed(seed)
    spec = ModelSpec(cell, vocab, vocab, True, hidden_size=6, num_layers=2, embedding_size=5)
    return RNNModel(spec).double()


class TinyLM(TBPTTMixin, L.LightningModule):
    def __init__(self, net, truncation, lr=0.5, clip=None):
        super().__init__()
        self.net, self.truncation, self.lr, self.tbptt_clip = net, truncation, lr, clip
        self.grads = []  # gradients at each optimizer step

    def forward(self, x, state):
        return self.net(x, state)

    def init_state(self, batch_size, device):
        return self.net.init_state(batch_size, device)

    def sequence_loss(self, out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def tbptt_model(self):
        return self.net

    def on_before_optimizer_step(self, optimizer):
        self.grads.append([p.grad.clone() for p in self.net.parameters()])


def fit(module, train, segment, epochs=1, valid=None, **kwargs):
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, **{"enable_checkpointing": False, **kwargs})
    valid_loader = stream_loader(valid.inputs, valid.targets, segment) if valid else None
    trainer.fit(module, stream_loader(train.inputs, train.targets, segment), valid_loader)
    return trainer


def full_bptt_grads(net, split: Split):
    net = copy.deepcopy(net)
    out, _ = net(split.inputs, net.init_state(split.num_streams, "cpu"))
    F.cross_entropy(out.reshape(-1, out.shape[-1]), split.targets.reshape(-1)).backward()
    return [p.grad for p in net.parameters()]


@pytest.mark.parametrize("segment", ["T", 7])
def test_fixed_K_equal_T_is_full_bptt_exactly(segment):
    split, vocab = corpus()
    T = split.length
    net = make_net(vocab)
    module = TinyLM(copy.deepcopy(net), Fixed(T))
    fit(module, split, T if segment == "T" else segment)
    assert len(module.grads) == 1 and module.tbptt_history == [(1, T)]
    for got, want in zip(module.grads[0], full_bptt_grads(net, split)):
        if segment == "T":  # one batch: the very same computation
            assert torch.equal(got, want)
        else:  # the chunk spans 4 batches: the same gradient up to float64 rounding
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    short = TinyLM(copy.deepcopy(net), Fixed(T // 2))
    fit(short, split, 7)
    assert not torch.allclose(short.grads[0][0], module.grads[0][0])  # truncation matters


def test_fixed_K_chunks_cross_batches_as_a_plain_tbptt_loop():
    split, vocab = corpus()
    net, K = make_net(vocab, seed=1), 5
    module = TinyLM(copy.deepcopy(net), Fixed(K), lr=0.3)
    fit(module, split, 7)
    ref = copy.deepcopy(net)  # the loop of pytorch/examples, one SGD step per chunk
    opt = torch.optim.SGD(ref.parameters(), lr=0.3)
    state = ref.init_state(split.num_streams, "cpu")
    for pos in range(0, split.length, K):
        out, state = ref(split.inputs[pos:pos + K], state)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]),
                               split.targets[pos:pos + K].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        state = tuple(s.detach() for s in state)
    assert [k for _, k in module.tbptt_history] == [K] * -(-split.length // K)
    for got, want in zip(module.net.parameters(), ref.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_artbp_segment_gradient_equals_the_projects_segment():
    split, vocab = corpus()
    net, seed = make_net(vocab, seed=2, cell=Cell.gru), 3
    module = TinyLM(copy.deepcopy(net), ARTBP(6.0, stride=2, seed=seed))
    fit(module, split, 5)  # segments cross batch boundaries
    lengths = [n for _, n in module.tbptt_history]
    assert sum(lengths) == split.length and len(set(lengths)) > 1
    schedule = ARTBP(6.0, stride=2).to_schedule()
    assert lengths[0] == artbp.draw_length(schedule, 10 ** 7, torch.Generator().manual_seed(seed))
    ref = copy.deepcopy(net)  # atbptt.artbp's own segment (compensation at every draw point)
    walker = Walker.start(ref, split.num_streams, "cpu")
    loss, _ = artbp.segment_forward(ref, split, walker, schedule, lengths[0],
                                    lambda o, y: F.cross_entropy(o.reshape(-1, o.shape[-1]),
                                                                 y.reshape(-1)),
                                    "cpu")
    loss.backward()
    for got, want in zip(module.grads[0], ref.parameters()):
        torch.testing.assert_close(got, want.grad, rtol=1e-12, atol=1e-15)


def test_adaptive_picks_the_controllers_K_hat_on_the_same_weights_and_windows():
    split, vocab = corpus()
    net = make_net(vocab, seed=3)
    setting = dict(delta=0.5, window=16, burn_in=4, num_windows=4, k_min=2, k_max=16,
                   reestimate_every=split.length, seed=7)  # re-estimated once, after the epoch
    module = TinyLM(copy.deepcopy(net), Adaptive(K0=None, **setting))
    fit(module, split, 10)
    ref_net = copy.deepcopy(net)
    ref = AdaptiveTruncation(ref_net, split.inputs, split.targets,
                             lambda o, y: F.cross_entropy(o, y), K0=None, **setting)
    first = ref.K  # estimated at once, on the initial weights: what the module trained with
    assert [k for _, k in module.tbptt_history[:-1]] == [first] * (len(module.tbptt_history) - 1)
    ref_net.load_state_dict(module.net.state_dict())  # the trained weights, the same windows next
    assert ref.step(split.length)
    (step, K_hat, beta_hat), = module.tbptt_estimates
    assert step == len(module.tbptt_history) and K_hat == ref.K == module.tbptt_K
    assert beta_hat == ref.estimate.beta_hat
    assert module.tbptt_controller.state_dict()["generator"].equal(ref.state_dict()["generator"])


def test_validation_carries_the_state_across_batches():
    split, vocab = corpus()
    train, valid = (Split(split.inputs[:40], split.targets[:40]),
                    Split(split.inputs[40:], split.targets[40:]))
    module = TinyLM(make_net(vocab, seed=4), Fixed(8))
    trainer = fit(module, train, 6, valid=valid)
    net = copy.deepcopy(module.net).eval()
    with torch.no_grad():  # one forward over the whole split from the zero state
        out, _ = net(valid.inputs, net.init_state(valid.num_streams, "cpu"))
        want = F.cross_entropy(out.reshape(-1, out.shape[-1]), valid.targets.reshape(-1))
    assert module.tbptt_eval_loss == pytest.approx(float(want), rel=1e-12)
    assert float(trainer.callback_metrics["val_loss"]) == pytest.approx(float(want), rel=1e-6)


@pytest.mark.parametrize("truncation", [
    Adaptive(delta=0.5, K0=4, window=12, burn_in=2, num_windows=3, k_min=2, k_max=12,
             reestimate_every=13, seed=1),
    ARTBP(5.0, seed=4)], ids=["adaptive", "artbp"])
def test_resume_from_a_lightning_checkpoint_keeps_K_and_the_estimator(tmp_path, truncation):
    split, vocab = corpus()
    net = make_net(vocab, seed=5)
    whole = TinyLM(copy.deepcopy(net), truncation)
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1,
                                       filename="{epoch}")
    fit(whole, split, 9, epochs=2, callbacks=[ckpt], enable_checkpointing=True)
    saved = torch.load(tmp_path / "epoch=0.ckpt", weights_only=True)["atbptt_tbptt"]
    resumed = TinyLM(copy.deepcopy(net), truncation)
    seen = {}

    class Probe(L.Callback):
        def on_train_epoch_start(self, trainer, module):  # after the module restored its part
            seen["K"], seen["history"] = module.tbptt_K, list(module.tbptt_history)
            if module.tbptt_controller is not None:
                seen["controller"] = module.tbptt_controller.state_dict()

    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[Probe()])
    trainer.fit(resumed, stream_loader(split.inputs, split.targets, 9),
                ckpt_path=tmp_path / "epoch=0.ckpt")
    assert seen["K"] == saved["K"] and seen["history"] == [tuple(h) for h in saved["history"]]
    if isinstance(truncation, Adaptive):
        assert saved["controller"]["num_estimates_done"] >= 2
        assert seen["controller"]["since_estimate"] == saved["controller"]["since_estimate"]
        assert seen["controller"]["generator"].equal(saved["controller"]["generator"])
        assert resumed.tbptt_controller.state_dict()["generator"].equal(
            whole.tbptt_controller.state_dict()["generator"])
        assert resumed.tbptt_estimates == whole.tbptt_estimates
    assert resumed.tbptt_history == whole.tbptt_history
    for got, want in zip(resumed.net.parameters(), whole.net.parameters()):
        assert torch.equal(got, want)


def test_import_without_lightning_is_one_line_and_atbptt_still_works():
    code = ("import sys; sys.modules['lightning'] = None\n"
            "import atbptt, atbptt.truncation; atbptt.AdaptiveTruncation\n"
            "try:\n    import atbptt.lightning\nexcept ImportError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == ("atbptt.lightning needs PyTorch Lightning 2.x, which is not installed: "
                          "pip install 'atbptt[lightning]'\n")


def test_bad_truncation_settings_name_the_key():
    with pytest.raises(ValueError, match=r"^K=0 is not allowed; K must be an integer >= 1$"):
        Fixed(0)
    with pytest.raises(ValueError,
                       match=r"^schedule='cubic' is not allowed; allowed: constant, poly$"):
        ARTBP(5.0, schedule="cubic").to_schedule()


PTB = SHARED_DATA / "ptb"


@pytest.mark.skipif(not (PTB / "ptb.train.txt").exists(), reason="PTB not found ($ATBPTT_DATA)")
def test_ptb_example_trains_in_a_lightning_trainer(tmp_path):
    args = ["--data", str(PTB), "--method", "adaptive", "--max-batches", "6", "--segment", "100",
            "--hidden", "32", "--emsize", "32", "--window", "40", "--num-windows", "8",
            "--k-max", "40", "--reestimate-every", "200", "--max-eval-batches", "5",
            "--out", str(tmp_path)]
    res = subprocess.run([sys.executable, str(REPO / "examples" / "ptb_lightning.py"), *args],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(re.findall(r"\| estimate \| step +\d+ \| K_hat +\d+", res.stdout)) == 2
    end = re.search(r"\| end \| valid ppl +(\S+) \| test ppl +(\S+)", res.stdout)
    # untrained ~10,000
    assert all(math.isfinite(float(v)) and float(v) < 3000 for v in end.groups())
    with open(tmp_path / "ptb" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["tbptt/K"]) for r in rows if r["tbptt/K"]][0] == 35.0
    assert any(r["tbptt/K_hat"] for r in rows) and any(r["val_loss"] for r in rows)


def test_ptb_example_refuses_bad_input_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "examples" / "ptb_lightning.py"), "--method",
                          "fixed", "--K", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == "" and list(tmp_path.iterdir()) == []
    assert res.stderr == "ptb_lightning.py: error: K=0 is not allowed; K must be an integer >= 1\n"
