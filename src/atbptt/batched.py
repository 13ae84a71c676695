"""Estimates computed together: N independent profiles from one pass over N×S windows.

One K update of the authors' LM procedure averages N = 5 independent estimates, each the
gradient-norm profile of its own S windows (NOTES §3 steps 1–2, 6). The windows of different
estimates never interact: each window's state gradient depends on its own inputs and burn-in
state only. So the N groups of S windows can be stacked along the window dimension and
profiled by one burn-in, one forward over W steps and one backward pass (``profile_gradients``
with a loss that is the sum of the N groups' losses, each ``loss_fn`` of its own S windows),
then split back into N profiles. The recurrent kernels then work on batches of N·S instead of
S (one call per step instead of N), which is what makes the update cheaper
(``scripts/bench_profile.py``, "estimates together").

What is the same as N separate passes (``adaptive.estimate`` with ``batch_estimates=False``):

- the windows: they are drawn from the generator in the same order, S streams and S offsets
  per estimate (``sample_windows``), so estimate n gets exactly the windows it would get alone;
- the loss scale: each group's loss is ``loss_fn`` of its own S windows, so a mean-reduced loss
  scales group n's φ and G by 1/S as it would alone (not by 1/(N·S));
- the numbers, in eval mode (or without dropout): equal up to float rounding (the kernels'
  summation order may depend on the batch size), and so equal β̂, δ̂ and K̂ except where a value
  sits on a rounding edge (tested in float64: ``tests/test_batched.py``).

What differs: with dropout active (training mode, ``method.profile_dropout=true``, the LM
default) the masks are drawn for N·S windows at once, from the same seed, so they are other
masks than the N separate passes draw: the estimates have the same distribution but are not the
same numbers. That is why batching is a switch (``method.batch_estimates``, default false), so
that the committed runs and the runs in progress keep reproducing exactly.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .adapters import burned_in, sample_windows
from .config import Lag0
from .profile import LossFn, Profile, backprop_loss, profile_gradients, profile_of


def grouped_loss(loss_fn: LossFn, groups: int) -> Callable[[Tensor, Tensor], Tuple[Tensor, bool]]:
    """The loss of ``groups`` stacked groups of windows: ``out`` ``[groups·S, O]`` and
    ``target`` ``[groups·S, ...]`` -> (Σ over groups of each group's ``loss_fn`` loss, summed
    over its windows if per-window; whether ``loss_fn`` returned a scalar). Raises ValueError
    if the windows do not split into ``groups`` equal groups or ``loss_fn`` returns another
    shape (``profile.backprop_loss``)."""
    def window_loss(out: Tensor, target: Tensor) -> Tuple[Tensor, bool]:
        if out.shape[0] % groups:
            raise ValueError(f"{out.shape[0]} windows do not split into {groups} equal groups")
        size = out.shape[0] // groups
        total, scalar = None, False
        for g in range(groups):
            part, scalar = backprop_loss(loss_fn, out[g * size:(g + 1) * size],
                                         target[g * size:(g + 1) * size])
            total = part if total is None else total + part
        return total, scalar
    return window_loss


def grad_norm_profiles(model: nn.Module, inputs: Tensor, targets: Tensor, state, loss_fn: LossFn,
                       groups: int, lag0: Lag0 | str | None = None) -> List[Profile]:
    """``groups`` profiles from one backward pass: ``inputs``/``targets`` ``[W, groups·S, ...]``
    hold the groups' windows side by side (group g: windows g·S .. (g+1)·S − 1), ``state`` their
    burn-in state ``[L, groups·S, H]``. Profile g is what ``profile.grad_norm_profile`` returns
    for group g alone (``phi`` ``[W, S]``, ``cum`` ``[W]``: G over the group's windows), up to
    float rounding. One lag convention for all: ``lag0=None`` finds it from the stacked pass.
    Raises ValueError as ``grad_norm_profile`` does, or if ``groups`` < 1 or does not divide
    the windows."""
    if groups < 1:
        raise ValueError(f"groups={groups} must be >= 1")
    grad, found, scalar = profile_gradients(model, inputs, targets, state,
                                            grouped_loss(loss_fn, groups), lag0)
    size = grad.shape[1] // groups
    return [profile_of(grad[:, g * size:(g + 1) * size], found, scalar) for g in range(groups)]


def profiles_together(model: nn.Module, inputs: Tensor, targets: Tensor, num_estimates: int, *,
                      window: int, burn_in: int, num_windows: int, loss_fn: LossFn,
                      generator: torch.Generator, device: torch.device,
                      init_state: Optional[Callable[[int], Any]] = None,
                      lag0: Lag0 | str | None = None) -> List[Profile]:
    """The ``num_estimates`` profiles of one update in one pass (module docstring).

    ``inputs``/``targets``: the training split ``[T, B, ...]``. Draws ``num_estimates`` sets of
    ``num_windows`` windows of ``burn_in + window`` steps from ``generator``, in the order
    ``num_estimates`` calls of ``sample_windows`` would; runs one burn-in from the zero state
    of all N·S windows without gradient, then ``grad_norm_profiles``. Returns N ``Profile``s
    (``phi`` ``[window, num_windows]``, ``cum`` ``[window]``). Memory: N times that of one
    profile. Raises ValueError as ``adaptive.estimate`` does."""
    drawn = [sample_windows(inputs, targets, burn_in + window, num_windows, generator)
             for _ in range(num_estimates)]
    x = torch.cat([d[0] for d in drawn], dim=1).to(device)
    y = torch.cat([d[1] for d in drawn], dim=1).to(device)
    state = burned_in(model, x, burn_in, device, init_state)
    return grad_norm_profiles(model, x[burn_in:], y[burn_in:], state, loss_fn, num_estimates, lag0)
