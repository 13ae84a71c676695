"""Truncated BPTT in PyTorch Lightning 2.x: fixed K, the adaptive rule, ARTBP.

Lightning 2.0 removed ``truncated_bptt_steps``. ``TBPTTMixin`` gives a ``LightningModule``
truncation back, with manual optimization (``pip install 'atbptt[lightning]'``)::

    class WordLM(TBPTTMixin, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = RNNModel(spec)
            self.truncation = Adaptive(delta=0.1, K0=35, window=100)   # or Fixed(35), ARTBP(35)
        def forward(self, x, state):                  # x [T, B, ...] -> (out [T, B, O], state)
            return self.net(x, state)
        def init_state(self, batch_size, device):     # the zero state of batch_size streams
            return self.net.init_state(batch_size, device)
        def sequence_loss(self, out, y):              # mean over every step and stream
            return F.cross_entropy(out.flatten(0, 1), y.flatten())
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1.0)

    trainer.fit(WordLM(), stream_loader(train_x, train_y, 200),
                stream_loader(valid_x, valid_y, 200))

**Data**: batches are consecutive time segments ``(x [L, B, ...], y [L, B, ...])`` of B
parallel streams, in order (``stream_loader``); the state is reset at each epoch start.
**Training**: a chunk (K steps; for ARTBP a segment of drawn length) runs forward from the
carried state, then ``manual_backward`` of its loss, the optional norm clip (``tbptt_clip``),
one optimizer step, and the state is detached. A chunk does not depend on L: one that reaches
the end of a batch keeps its graph and state and goes on in the next batch; the last batch of
an epoch ends it. Loss: fixed and adaptive K, the chunk's mean (pieces weighted by their
lengths); ARTBP, every step weighted ``1/K`` (the segment's mean times ``length/K``), with the
gradient across each uncut draw point multiplied by ``1/(1 - c_n)`` (``atbptt.artbp``).
**Adaptive**: the public ``AdaptiveTruncation`` sets K (windows from the training streams,
the model in the loop, ``step(steps)`` after each update, on its own cadence). Logged with
``self.log``: ``tbptt/K``, ``train_loss``, and for the adaptive rule ``tbptt/delta_hat``,
``tbptt/K_hat``, ``tbptt/beta_hat``. **Validation/test** carry their own state across
batches (no gradient) and log ``val_loss``/``test_loss``, the mean over every step.
**Checkpoints**: Lightning's own checkpoint holds K, the controller's ``state_dict`` and the
ARTBP generator (key ``atbptt_tbptt``); resuming from an epoch-end checkpoint continues as an
uninterrupted run would.

Importing this module without Lightning raises ``ImportError`` with one line.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

try:
    import lightning.pytorch as pl  # noqa: F401  (the extra this module needs)
except ImportError:
    raise ImportError("atbptt.lightning needs PyTorch Lightning 2.x, which is not installed: "
                      "pip install 'atbptt[lightning]'") from None

from . import artbp
from .controller import AdaptiveTruncation
from .models import detach_state
from .truncation import ARTBP, Adaptive, Fixed

__all__ = ["TBPTTMixin", "Fixed", "Adaptive", "ARTBP", "StreamSegments", "stream_loader"]

ARTBP_HORIZON = 10 ** 7  # steps a drawn segment may span at most (an epoch end cuts it anyway)


class StreamSegments(Dataset):
    """Consecutive time segments of parallel streams: item i is ``(inputs[iL:(i+1)L],
    targets[iL:(i+1)L])`` for ``inputs``/``targets`` ``[T, B, ...]`` (the last one shorter)."""

    def __init__(self, inputs: Tensor, targets: Tensor, segment: int):
        if inputs.shape[:2] != targets.shape[:2] or inputs.dim() < 2:
            raise ValueError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} "
                             "must both be [T, B, ...] with the same T and B")
        if segment < 1:
            raise ValueError(f"segment={segment} must be >= 1")
        self.inputs, self.targets, self.segment = inputs, targets, int(segment)

    def __len__(self) -> int:
        return -(-self.inputs.shape[0] // self.segment)

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        s = slice(i * self.segment, (i + 1) * self.segment)
        return self.inputs[s], self.targets[s]


def stream_loader(inputs: Tensor, targets: Tensor, segment: int) -> DataLoader:
    """A loader of ``StreamSegments`` in order (no shuffling, no batching: B is the streams)."""
    return DataLoader(StreamSegments(inputs, targets, segment), batch_size=None, shuffle=False)


class TBPTTMixin:
    """Put before ``LightningModule``; the class defines ``forward(x, state)``,
    ``init_state(batch_size, device)``, ``sequence_loss(out, y)`` (a scalar mean over steps
    and streams), ``configure_optimizers`` (one optimizer) and sets ``self.truncation``
    (``Fixed``, ``Adaptive`` or ``ARTBP``); ``tbptt_clip`` (optional): the gradient-norm clip.
    ``window_loss(out [S, O], y [S, ...])`` (the estimator's last-step loss) defaults to
    ``sequence_loss`` over one step. ``tbptt_history`` lists ``(optimizer step, K)`` of
    every chunk (ARTBP: the segment's drawn length), ``tbptt_estimates`` ``(optimizer step,
    K̂, β̂)`` of every re-estimate of the adaptive rule (both kept in checkpoints). A class
    that overrides one of the hooks used here calls ``super()``."""

    tbptt_clip: Optional[float] = None

    @property
    def automatic_optimization(self) -> bool:
        return False

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        if value:
            raise ValueError("TBPTTMixin steps the optimizer itself (manual optimization)")

    def window_loss(self, out: Tensor, y: Tensor) -> Tensor:
        return self.sequence_loss(out.unsqueeze(0), y.unsqueeze(0))

    def tbptt_model(self) -> torch.nn.Module:
        """The module the adaptive rule profiles (``forward(x, state)``, and ``init_state``):
        this one by default. Return the wrapped network when it has ``recur``/``decode``/
        ``state_output`` (``adaptive.RecurDecode``, as ``atbptt.models.RNNModel``): the profile
        then decodes the last step only, and lag 0 is the state after the last step."""
        return self

    # ---------------------------------------------------------------- set-up and checkpoints
    @property
    def tbptt_K(self) -> int:
        """The K of the next chunk (ARTBP: the mean length)."""
        tr = self.truncation
        if isinstance(tr, Fixed):
            return tr.K
        if isinstance(tr, ARTBP):
            return int(round(tr.mean_length))
        return self.tbptt_controller.K

    def on_train_start(self) -> None:
        tr, loaded = self.truncation, getattr(self, "_tbptt_loaded", None) or {}
        if not isinstance(tr, (Fixed, Adaptive, ARTBP)):
            raise ValueError(f"truncation={tr!r} is not allowed; use Fixed, Adaptive or ARTBP")
        self.tbptt_controller: Optional[AdaptiveTruncation] = None
        self._tbptt_generator: Optional[torch.Generator] = None
        self._tbptt_schedule = tr.to_schedule() if isinstance(tr, ARTBP) else None
        if isinstance(tr, ARTBP):
            self._tbptt_generator = torch.Generator().manual_seed(tr.seed)
            if loaded.get("generator") is not None:
                self._tbptt_generator.set_state(loaded["generator"])
        if isinstance(tr, Adaptive):
            self.tbptt_controller = self._build_controller(tr, loaded.get("controller"))
        self.tbptt_history: List[Tuple[int, int]] = [tuple(h) for h in loaded.get("history", [])]
        self.tbptt_estimates: List[Tuple[int, int, float]] = [
            tuple(e) for e in loaded.get("estimates", [])]
        self._tbptt_loaded = None

    def _build_controller(self, tr: Adaptive, state: Optional[Dict]) -> AdaptiveTruncation:
        inputs, targets = tr.inputs, tr.targets
        if inputs is None:
            data = getattr(self.trainer.train_dataloader, "dataset", None)
            if not isinstance(data, StreamSegments):
                raise ValueError("Adaptive(inputs=, targets=) is needed unless the train "
                                 "loader is atbptt.lightning.stream_loader")
            inputs, targets = data.inputs, data.targets
        K0 = int(state["K"]) if state else tr.K0  # resuming: no estimate at construction
        ctl = AdaptiveTruncation(
            self.tbptt_model(), inputs, targets, self.window_loss, delta=tr.delta, K0=K0,
            window=tr.window, burn_in=tr.burn_in, num_windows=tr.num_windows, k_min=tr.k_min,
            k_max=tr.k_max,
            reestimate_every=tr.reestimate_every, grad_norm_bound=tr.grad_norm_bound,
            device=self.device, seed=tr.seed, **dict(tr.options))
        if state:
            ctl.load_state_dict(state)
        return ctl

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        ctl, gen = getattr(self, "tbptt_controller", None), getattr(self, "_tbptt_generator", None)
        checkpoint["atbptt_tbptt"] = {
            "K": self.tbptt_K if hasattr(self, "tbptt_history") else None,
            "controller": ctl.state_dict() if ctl is not None else None,
            "generator": gen.get_state() if gen is not None else None,
            "history": [list(h) for h in getattr(self, "tbptt_history", [])],
            "estimates": [list(e) for e in getattr(self, "tbptt_estimates", [])]}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self._tbptt_loaded = checkpoint.get("atbptt_tbptt")

    # ---------------------------------------------------------------- training
    def on_train_epoch_start(self) -> None:
        self._tbptt_state, self._tbptt_pieces, self._tbptt_done, self._tbptt_length = None, [], 0, 0

    def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        if self._tbptt_state is None:
            self._tbptt_state = self.init_state(x.shape[1], self.device)
        pos = 0
        while pos < x.shape[0]:
            if self._tbptt_length == 0:
                self._tbptt_length = self._next_length()
            n = min(self._tbptt_length - self._tbptt_done, x.shape[0] - pos)
            out, self._tbptt_state = self._forward_piece(x[pos:pos + n], self._tbptt_state)
            self._tbptt_pieces.append((self.sequence_loss(out, y[pos:pos + n]), n))
            self._tbptt_done += n
            pos += n
            if self._tbptt_done == self._tbptt_length:
                self._finish_chunk(x.shape[1])
        if self._tbptt_pieces and self.trainer.is_last_batch:
            self._finish_chunk(x.shape[1])  # the chunk ends with the data

    def on_train_epoch_end(self) -> None:
        if getattr(self, "_tbptt_pieces", None):  # an epoch cut short (limit_train_batches)
            self._finish_chunk(None)

    def _next_length(self) -> int:
        if self._tbptt_schedule is not None:
            return artbp.draw_length(self._tbptt_schedule, ARTBP_HORIZON, self._tbptt_generator)
        return self.tbptt_K

    def _forward_piece(self, x: Tensor, state):
        """Forward ``x`` from ``state``; ARTBP: compensate at every draw point inside the
        segment (offsets ``n * stride`` after its cut, n >= 1), running fused between them."""
        sched = self._tbptt_schedule
        if sched is None:
            return self(x, state)
        start, outs, a = self._tbptt_done, [], 0
        for t in range(start, start + x.shape[0]):
            if t > 0 and t % sched.stride == 0:
                if t > start:
                    out, state = self(x[a:t - start], state)
                    outs.append(out)
                    a = t - start
                state = artbp.compensate(state, sched.factor(t // sched.stride))
        out, state = self(x[a:], state)
        outs.append(out)
        return (torch.cat(outs) if len(outs) > 1 else outs[0]), state

    def _finish_chunk(self, batch_size: Optional[int]) -> None:
        """Backward, clip, step and detach: the end of a chunk (or ARTBP segment)."""
        K, done = self.tbptt_K, self._tbptt_done
        denom = self._tbptt_schedule.mean_length if self._tbptt_schedule is not None else done
        loss = sum(m * (n / denom) for m, n in self._tbptt_pieces)
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        if self.tbptt_clip is not None:
            self.clip_gradients(opt, gradient_clip_val=self.tbptt_clip,
                                gradient_clip_algorithm="norm")
        opt.step()
        self.tbptt_history.append((self.global_step, K if self._tbptt_schedule is None else done))
        self._tbptt_state = detach_state(self._tbptt_state)
        self._tbptt_pieces, self._tbptt_done, self._tbptt_length = [], 0, 0
        if batch_size is not None:  # inside training_step: log
            self.log("train_loss", loss.detach(), on_step=True, on_epoch=True,
                     batch_size=batch_size)
            self.log("tbptt/K", float(K), on_step=True, on_epoch=False, batch_size=batch_size)
        ctl = self.tbptt_controller
        if ctl is not None and ctl.step(done):
            est = ctl.estimate
            self.tbptt_estimates.append((self.global_step, ctl.K, float(est.beta_hat)))
            if batch_size is not None:
                for name, value in (("K_hat", ctl.K), ("delta_hat", est.delta_hat(ctl.K)),
                                    ("beta_hat", est.beta_hat)):
                    self.log(f"tbptt/{name}", float(value), on_step=True, on_epoch=False,
                             batch_size=batch_size)

    # ---------------------------------------------------------------- validation and test
    def on_validation_epoch_start(self) -> None:
        self._tbptt_eval = [None, 0.0, 0]  # state, loss sum, steps

    def validation_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_log("val_loss")

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_log("test_loss")

    def _eval_step(self, batch: Tuple[Tensor, Tensor]) -> None:
        x, y = batch
        state = self._tbptt_eval[0]
        if state is None:
            state = self.init_state(x.shape[1], self.device)
        out, state = self(x, state)
        self._tbptt_eval[0] = detach_state(state)
        self._tbptt_eval[1] += float(self.sequence_loss(out, y).double()) * x.shape[0]
        self._tbptt_eval[2] += x.shape[0]

    def _eval_log(self, name: str) -> None:
        """Log the mean loss over every step (float64 sum; also kept in ``tbptt_eval_loss``,
        since Lightning logs float32)."""
        _, total, steps = self._tbptt_eval
        if steps:
            self.tbptt_eval_loss = total / steps
            self.log(name, self.tbptt_eval_loss, on_epoch=True)
