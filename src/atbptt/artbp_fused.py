"""ARTBP's compensated recurrence in one fused pass per segment (Tallec & Ollivier 2017, §4).

ARTBP multiplies the gradient that flows back across a transition by ``1 / (1 - c_n)`` at
every draw point where the drawn truncation said 'do not cut' (``artbp.compensate``). With
draw points at every step (``stride = 1``) the stepwise way (``artbp.run_segment`` with
``fused=False``) runs the core one step at a time with the compensation between the steps.
Here a segment's draw is already made when it runs, so every transition's scale is known
before the forward pass, and one layer of the segment runs as one autograd node:

- **forward**: the fused recurrent kernel over the whole segment (``torch.lstm``/``gru``/
  ``rnn_tanh``: cuDNN on a GPU, oneDNN or native on the CPU; no autograd graph), then the gate
  activations that the backward pass needs, recomputed from the kernel's hidden states with two
  batched matrix products (for an LSTM also the cell states, one elementwise update per step).
  An LSTM on the CPU instead runs its forward step by step itself (the input side for all steps
  in one product, then one recurrent product and the gate update per step), which saves that
  second pass over the gates: on the CPU the matrix products, not the calls, dominate;
- **backward**: BPTT over the segment, step by step, with the gradient with respect to the
  state entering step s multiplied by ``factors[s]`` (1 where no draw point is, the
  compensation ``1 / (1 - c_n)`` at the n-th draw point); the parameter and input gradients
  then come from a few batched matrix products over all steps.

In exact arithmetic both ways compute the same gradient (``tests/test_artbp_fused.py`` checks
them against each other and the enumeration over every draw in ``tests/test_artbp.py`` runs
through this one); in floating point they agree to rounding. Cells: LSTM, GRU and tanh RNN
(``nn.LSTM``/``nn.GRU``/``nn.RNN`` of ``atbptt.models``, biases optional, unidirectional, no
projections). A multi-layer core with dropout between its layers in training mode is not
fused (``supported`` is false): its per-step masks would be drawn differently.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_KERNELS = {nn.LSTM: torch.lstm, nn.GRU: torch.gru}


def supported(core: nn.Module) -> bool:
    """Whether ``fused_core`` can run ``core`` (see the module docstring)."""
    if type(core) not in (nn.LSTM, nn.GRU, nn.RNN) or core.bidirectional or core.batch_first:
        return False
    if isinstance(core, nn.RNN) and core.nonlinearity != "tanh":
        return False
    if getattr(core, "proj_size", 0):
        return False
    return not (core.training and core.dropout > 0 and core.num_layers > 1)


def fused_core(core: nn.Module, emb: Tensor, state, factors: Sequence[float]):
    """``core(emb, state)`` with the gradient entering step s scaled by ``factors[s]``.

    ``emb`` ``[L, B, E]``; ``state`` ``(h, c)`` (LSTM) or ``h``, each ``[layers, B, H]``;
    ``factors``: L floats (``factors[0]`` is never applied: the segment's start is its cut).
    Returns the top layer's hidden ``[L, B, H]`` and the last state, as ``core`` does, with the
    kernel's forward values. Raises ValueError if ``core`` is not ``supported`` or the lengths
    differ."""
    if not supported(core):
        raise ValueError(f"{type(core).__name__} with these settings cannot run fused")
    if len(factors) != emb.shape[0]:
        raise ValueError(f"{len(factors)} factors for a segment of {emb.shape[0]} steps")
    factors = (1.0, *(float(f) for f in factors[1:]))
    lstm = isinstance(core, nn.LSTM)
    h0, c0 = state if lstm else (state, None)
    kind = "lstm" if lstm else "gru" if isinstance(core, nn.GRU) else "tanh"
    x, hs, cs = emb, [], []
    for layer in range(core.num_layers):
        weights = [getattr(core, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh")]
        biases = ([getattr(core, f"{name}_l{layer}") for name in ("bias_ih", "bias_hh")]
                  if core.bias else [None, None])
        x, h, c = _Layer.apply(kind, factors, x, h0[layer],
                               None if c0 is None else c0[layer], *weights, *biases)
        hs.append(h)
        cs.append(c)
    h = torch.stack(hs)
    return x, ((h, torch.stack(cs)) if lstm else h)


def _kernel(kind: str, x: Tensor, h0: Tensor, c0: Optional[Tensor], params: List[Tensor]):
    """One layer through the fused kernel: (out [L, B, H], h_L [B, H], c_L or None)."""
    if kind == "lstm":
        out, h, c = torch.lstm(x, (h0[None], c0[None]), params, len(params) == 4, 1, 0.0,
                               False, False, False)
        return out, h[0], c[0]
    fn = torch.gru if kind == "gru" else torch.rnn_tanh
    out, h = fn(x, h0[None], params, len(params) == 4, 1, 0.0, False, False, False)
    return out, h[0], None


def _affine(inp: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``inp @ weight.T + bias`` over ``[L, B, D]`` as one matrix product."""
    flat = inp.reshape(-1, inp.shape[-1])
    out = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
    return out.view(*inp.shape[:2], -1)


class _Layer(torch.autograd.Function):
    """One layer over a segment: fused forward, compensated step-by-step backward."""

    @staticmethod
    def forward(ctx, kind, factors, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        if kind == "lstm" and not x.is_cuda:
            out, h_last, c_last, saved = _lstm_loop(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
            prev = torch.cat([h0[None], out[:-1]])
            ctx.kind, ctx.factors, ctx.has_bias = kind, factors, b_ih is not None
            ctx.save_for_backward(x, prev, w_ih, w_hh, *saved)
            return out, h_last, c_last
        params = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else [])
        out, h_last, c_last = _kernel(kind, x, h0, c0, params)
        prev = torch.cat([h0[None], out[:-1]])  # h_{s-1} for every step s
        gi, gh = _affine(x, w_ih, b_ih), _affine(prev, w_hh, b_hh)
        if kind == "lstm":
            saved = _lstm_gates(gi + gh, c0)
        elif kind == "gru":
            saved = _gru_gates(gi, gh, prev, out)
        else:
            saved = (1 - out * out,)  # tanh'
        ctx.kind, ctx.factors, ctx.has_bias = kind, factors, b_ih is not None
        ctx.save_for_backward(x, prev, w_ih, w_hh, *saved)
        return out, h_last, c_last

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_h, d_c):
        x, prev, w_ih, w_hh, *saved = ctx.saved_tensors
        L, B, H = prev.shape
        d_out = torch.zeros_like(prev) if d_out is None else d_out
        carry_h = torch.zeros_like(prev[0]) if d_h is None else d_h.clone()
        step = {"lstm": _lstm_backward, "gru": _gru_backward, "tanh": _tanh_backward}[ctx.kind]
        d_gi, d_gh, carry_h, carry_c = step(d_out, carry_h, d_c, saved, w_hh, ctx.factors)
        flat_gi, flat_gh = d_gi.reshape(L * B, -1), d_gh.reshape(L * B, -1)
        d_x = (flat_gi @ w_ih).view(*x.shape) if ctx.needs_input_grad[2] else None
        d_w_ih = flat_gi.t() @ x.reshape(L * B, -1)
        d_w_hh = flat_gh.t() @ prev.reshape(L * B, H)
        d_b_ih = flat_gi.sum(0) if ctx.has_bias else None
        d_b_hh = flat_gh.sum(0) if ctx.has_bias else None
        return None, None, d_x, carry_h, carry_c, d_w_ih, d_w_hh, d_b_ih, d_b_hh


def _column(factors: Sequence[float], like: Tensor) -> Tensor:
    """``factors`` as ``[L, 1, 1]`` on ``like``'s device, copied without a host sync."""
    column = torch.tensor(factors, dtype=like.dtype)
    if like.is_cuda:
        column = column.pin_memory().to(like.device, non_blocking=True)
    return column.view(-1, 1, 1)


# ----------------------------------------------------------------------------- LSTM
def _lstm_gates(pre: Tensor, c0: Tensor) -> Tuple[Tensor, ...]:
    """Gate activations ``[L, B, 4H]`` (i, f, g, o), the cell state entering each step and
    tanh of the one leaving it, from the pre-activations; the cell states by one update a step."""
    H = pre.shape[-1] // 4
    gates = pre.sigmoid()
    gates[..., 2 * H:3 * H] = pre[..., 2 * H:3 * H].tanh()
    i, f, g = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:3 * H]
    update = i * g
    cells = torch.empty_like(update)
    c = c0
    for s in range(pre.shape[0]):
        c = torch.addcmul(update[s], f[s], c, out=cells[s])
    return gates, torch.cat([c0[None], cells[:-1]]), cells.tanh()


def _lstm_loop(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """The LSTM forward step by step (the CPU's way: no second pass over the gates): the
    input side for all steps in one product, then per step the recurrent product and the
    gate update. Returns out ``[L, B, H]``, h_L, c_L and what ``_lstm_backward`` needs."""
    L, H = x.shape[0], h0.shape[-1]
    pre = _affine(x, w_ih, b_ih)
    if b_hh is not None:
        pre += b_hh
    gates = torch.empty_like(pre)
    cells, out = torch.empty_like(pre[..., :H]), torch.empty_like(pre[..., :H])
    h, c, w = h0, c0, w_hh.t()
    for s in range(L):
        torch.addmm(pre[s], h, w, out=pre[s])
        torch.sigmoid(pre[s], out=gates[s])
        torch.tanh(pre[s, :, 2 * H:3 * H], out=gates[s, :, 2 * H:3 * H])
        i, f, g, o = (gates[s, :, k * H:(k + 1) * H] for k in range(4))
        c = torch.addcmul(f * c, i, g, out=cells[s])
        h = torch.mul(o, c.tanh(), out=out[s])
    return out, h, c, (gates, torch.cat([c0[None], cells[:-1]]), cells.tanh())


def _lstm_backward(d_out, carry_h, d_c, saved, w_hh, factors):
    gates, c_prev, tanh_c = saved
    L, B, H = tanh_c.shape
    i, f, g, o = (gates[..., k * H:(k + 1) * H] for k in range(4))
    to_c = o * (1 - tanh_c * tanh_c)  # ∂c/∂h through h = o tanh(c)
    # ∂(pre-activation)/∂c for i, f, g and ∂/∂h for o
    by_c = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], -1).view(L, B, 3, H)
    by_h = tanh_c * o * (1 - o)
    f_scaled = f * _column(factors, f)
    d_pre = torch.empty_like(gates)
    view = d_pre.view(L, B, 4, H)
    carry_c = torch.zeros_like(tanh_c[0]) if d_c is None else d_c
    for s in range(L - 1, -1, -1):
        dh = carry_h.add_(d_out[s])
        dc = torch.addcmul(carry_c, dh, to_c[s])
        torch.mul(by_c[s], dc[:, None], out=view[s, :, :3])
        torch.mul(by_h[s], dh, out=view[s, :, 3])
        carry_h = torch.addmm(dh, d_pre[s], w_hh, beta=0, alpha=factors[s])
        carry_c = dc.mul_(f_scaled[s])
    return d_pre, d_pre, carry_h, carry_c


# ----------------------------------------------------------------------------- GRU
def _gru_gates(gi: Tensor, gh: Tensor, prev: Tensor, out: Tensor) -> Tuple[Tensor, ...]:
    """r, z, n and W_hn h + b_hn of every step (batched: the hidden states are known)."""
    H = prev.shape[-1]
    rz = (gi[..., :2 * H] + gh[..., :2 * H]).sigmoid()
    r, z = rz[..., :H], rz[..., H:]
    n = (gi[..., 2 * H:] + r * gh[..., 2 * H:]).tanh()
    return r, z, n, gh[..., 2 * H:], prev


def _gru_backward(d_out, carry_h, d_c, saved, w_hh, factors):
    r, z, n, gh_n, prev = saved
    L, B, H = n.shape
    to_n = (1 - z) * (1 - n * n)  # ∂(pre n)/∂h
    to_z = (prev - n) * z * (1 - z)  # ∂(pre z)/∂h
    to_r = gh_n * r * (1 - r)  # ∂(pre r)/∂(pre n)
    z_scaled = z * _column(factors, z)
    d_gh = torch.empty(L, B, 3 * H, dtype=n.dtype, device=n.device)
    d_pre_n = torch.empty_like(n)
    for s in range(L - 1, -1, -1):
        dh = carry_h.add_(d_out[s])
        torch.mul(dh, to_n[s], out=d_pre_n[s])
        torch.mul(dh, to_z[s], out=d_gh[s, :, H:2 * H])
        torch.mul(d_pre_n[s], to_r[s], out=d_gh[s, :, :H])
        torch.mul(d_pre_n[s], r[s], out=d_gh[s, :, 2 * H:])
        carry_h = torch.addmm(dh * z_scaled[s], d_gh[s], w_hh, alpha=factors[s])
    d_gi = torch.cat([d_gh[..., :2 * H], d_pre_n], -1)
    return d_gi, d_gh, carry_h, None


# ----------------------------------------------------------------------------- tanh RNN
def _tanh_backward(d_out, carry_h, d_c, saved, w_hh, factors):
    (slope,) = saved
    d_pre = torch.empty_like(slope)
    for s in range(slope.shape[0] - 1, -1, -1):
        dh = carry_h.add_(d_out[s])
        torch.mul(dh, slope[s], out=d_pre[s])
        carry_h = torch.addmm(dh, d_pre[s], w_hh, beta=0, alpha=factors[s])
    return d_pre, d_pre, carry_h, None
