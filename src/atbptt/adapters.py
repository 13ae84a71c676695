"""How the estimator drives any recurrent module: steps, states, windows, kernels.

Any module ``forward(x, state) -> (out, state)`` works; one that also follows the
``RecurDecode`` protocol gets the fast path (the W−1 earlier steps of a window are not decoded;
``scripts/bench_profile.py`` measures the saving). State tensors (``h``, or ``(h, c)`` for an
LSTM) have the window dimension at dim 1, ``[num_layers, S, H]``, as in ``atbptt.models``.
Inputs and targets are time-major, ``[T, B, ...]`` (``check_layout``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class RecurDecode(Protocol):
    """Optional protocol that gives any module the profile's fast path (no decoding of the
    W−1 earlier steps of a window), next to its ``forward(x, state) -> (out, state)``:

    - ``recur(x, state) -> (hidden, state)``: the recurrent part only, ``x`` ``[T, B, ...]``,
      ``hidden`` ``[T, B, H]`` (what the readout reads), ``state`` as ``forward``'s;
    - ``decode(hidden) -> out``: the readout, ``[T, B, H]`` -> ``[T, B, O]``;
    - optionally ``state_output(state) -> [1, B, H]``: what ``decode`` reads after the last
      step, computed from the returned state (for ``nn.LSTM``, the top layer of ``h_n``:
      ``state[0][-1:]``). With it lag 0 is ``s_W`` (``Lag0.state_after_step``); without it
      the last step is decoded from ``recur``'s ``hidden`` and lag 0 is ``s_{W-1}``.

    ``decode(recur(x, s)[0])`` must equal ``forward(x, s)[0]``. This project's ``RNNModel``
    follows it."""

    def recur(self, x: Tensor, state: Any) -> Tuple[Tensor, Any]: ...

    def decode(self, hidden: Tensor) -> Tensor: ...


# ----------------------------------------------------------------------------- model stepping

def _is_rnn_model(model: nn.Module) -> bool:
    """A module with the fast path: separate recurrent core and readout (``RecurDecode``)."""
    return isinstance(model, RecurDecode)


def state_tensors(state) -> Tuple[Tensor, ...]:
    """The tensors of a state: ``(h,)`` or ``(h, c)``."""
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


def map_state(state, fn):
    """Apply ``fn`` to every tensor of a state, keeping its structure."""
    return tuple(fn(s) for s in state) if isinstance(state, (tuple, list)) else fn(state)


def advance(model: nn.Module, x: Tensor, state):
    """Run the steps ``x`` ``[T, S, ...]`` without decoding; returns the new state."""
    if x.shape[0] == 0:
        return state
    if _is_rnn_model(model):
        return model.recur(x, state)[1]
    return model(x, state)[1]


def decode_last_step(model: nn.Module, x_last: Tensor, state):
    """Run the last step ``x_last`` ``[1, S, ...]`` and decode it: returns (out [S, O], state).

    A ``RecurDecode`` module with ``state_output`` decodes from it, so that the loss is a
    function of the returned state node (lag 0 = ``s_W``); otherwise the output is whatever
    the module reads out, and ``grad_norm_profile`` finds out which state it depends on."""
    S = x_last.shape[1]
    if _is_rnn_model(model):
        hidden, state = model.recur(x_last, state)
        if hasattr(model, "state_output"):
            hidden = model.state_output(state)
        return _last_step_output(model.decode(hidden), S), state
    out, state = model(x_last, state)
    return _last_step_output(out, S), state


def _last_step_output(out: Tensor, S: int) -> Tensor:
    """``[S, ...]`` from the output of one step: ``[1, S, ...]`` (time-major) or ``[S, ...]``
    (flattened ``[T*S, O]`` with T = 1, as pytorch/examples' model returns its log-softmax)."""
    if out.dim() >= 2 and out.shape[0] == 1 and out.shape[1] == S:
        return out[0]
    if out.dim() >= 1 and out.shape[0] == S:
        return out
    raise ValueError(f"one step of forward returned out of shape {list(out.shape)}; expected "
                     f"[1, {S}, ...] (time-major) or [{S}, ...] for {S} windows")


def start_state(model: nn.Module, state, requires_grad: bool):
    """A detached copy of ``state`` in the model's floating dtype (a float32 ``init_state``
    fed to a float64 model is cast), optionally a leaf that requires grad."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else None
    return map_state(state, lambda s: s.detach().to(dtype=dtype or s.dtype)
                     .requires_grad_(requires_grad))


def device_of(model: nn.Module, fallback: Tensor) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else fallback.device


# ----------------------------------------------------------------------------- kernels

@contextlib.contextmanager
def native_cpu_kernels():
    """PyTorch's native CPU RNN kernels instead of oneDNN's, whose backward always computes
    the weight gradients (the profile needs only state gradients)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def cuda_eval_guard(model: nn.Module, fallback: Tensor):
    """cuDNN's RNN backward refuses eval mode: use the native kernels there."""
    if device_of(model, fallback).type == "cuda" and not model.training:
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def profile_backend(model: nn.Module, fallback: Tensor):
    """Kernels for a state-only backward pass.

    CUDA: cuDNN's RNN backward refuses eval mode, so use the native kernels there. CPU: the
    oneDNN LSTM backward always computes the weight gradients too; the native kernels let
    autograd skip them, which halves the profile's time (scripts/bench_profile.py)."""
    if device_of(model, fallback).type == "cuda":
        return cuda_eval_guard(model, fallback)
    return native_cpu_kernels()


# ----------------------------------------------------------------------------- windows

def check_layout(model: nn.Module, inputs: Tensor, targets: Tensor) -> None:
    """Raise ValueError unless ``inputs`` and ``targets`` are time-major tensors ``[T, B, ...]``
    of one T >= 1 and one B, and no layer of ``model`` expects ``batch_first`` input."""
    for name, value in (("inputs", inputs), ("targets", targets)):
        if not isinstance(value, Tensor) or value.dim() < 2:
            shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a time-major tensor [T, B, ...] (T steps of B "
                             f"streams); got {shape}")
    if inputs.shape[:2] != targets.shape[:2] or inputs.shape[0] < 1:
        raise ValueError(f"inputs {list(inputs.shape)} and targets {list(targets.shape)} must "
                         "share their first two dimensions [T, B] (time-major), with T >= 1")
    layers = [name or type(m).__name__ for name, m in model.named_modules()
              if getattr(m, "batch_first", False) is True]
    if layers:
        raise ValueError(f"the model's layer '{layers[0]}' has batch_first=True, and the "
                         "estimator feeds time-major input [T, B, ...]: build it with "
                         "batch_first=False")


def sample_windows(inputs: Tensor, targets: Tensor, length: int, num_windows: int,
                   generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """``num_windows`` windows of ``length`` steps at random (stream, offset) of a split
    ``[T, B, ...]``; returns ``[length, S, ...]``. Draws only from ``generator`` (CPU)."""
    T, B = inputs.shape[:2]
    if length > T:
        raise ValueError(f"windows of {length} steps do not fit a split of {T} steps")
    stream = torch.randint(0, B, (num_windows,), generator=generator)
    offset = torch.randint(0, T - length + 1, (num_windows,), generator=generator)
    time_index = offset[None, :] + torch.arange(length)[:, None]  # (length, S)
    stream_index = stream[None, :].expand(length, num_windows)
    tx, sx = time_index.to(inputs.device), stream_index.to(inputs.device)
    ty, sy = time_index.to(targets.device), stream_index.to(targets.device)
    return inputs[tx, sx], targets[ty, sy]


def initial_state(model: nn.Module, batch_size: int, device: torch.device,
                  init_state: Optional[Callable[[int], Any]] = None):
    """The zero state of ``batch_size`` windows on ``device``: ``init_state(batch_size)`` if
    given, else the model's ``init_state(batch_size, device)`` (this project's models) or
    ``init_hidden(batch_size)`` (pytorch/examples'). Raises ValueError if there is none."""
    if init_state is not None:
        state = init_state(batch_size)
    elif hasattr(model, "init_state"):
        state = model.init_state(batch_size, device)
    elif hasattr(model, "init_hidden"):
        state = model.init_hidden(batch_size)
    else:
        raise ValueError("the estimator needs the windows' zero state: pass init_state="
                         "lambda S: ..., or give the model init_state(batch_size, device) or "
                         "init_hidden(batch_size)")
    return map_state(state, lambda s: s.to(device))


def burned_in(model: nn.Module, x: Tensor, burn_in: int, device: torch.device,
              init_state: Optional[Callable[[int], Any]] = None):
    """The state of the windows ``x`` ``[burn_in + W, S, ...]`` after their first ``burn_in``
    steps, run from the zero state (``initial_state``) without gradient."""
    state = start_state(model, initial_state(model, x.shape[1], device, init_state),
                        requires_grad=False)
    with torch.no_grad():
        return advance(model, x[:burn_in], state)
