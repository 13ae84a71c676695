"""Recurrent sequence models: ``forward(x, state) -> (out, state)``, no loss inside.

Time-major throughout: ``x`` is ``[T, B]`` token ids or ``[T, B, D]`` vectors, ``out`` is
``[T, B, output_size]``. The recurrent core (``recur``) and the readout (``decode``) are
separate so that TBPTT burn-in steps and the gradient-norm profile can skip the decoder.
State: ``(h, c)`` for LSTM, ``h`` otherwise, each ``[num_layers, B, hidden_size]``.
The cores are torch's fused ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (cuDNN on CUDA).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

import torch
from torch import Tensor, nn

from .config import Cell, Init

State = Union[Tensor, Tuple[Tensor, Tensor]]

_CORES = {Cell.lstm: nn.LSTM, Cell.gru: nn.GRU, Cell.srnn: nn.RNN}


@dataclass
class ModelSpec:
    cell: Cell
    input_size: int  # vocabulary size (token inputs) or input dimension (vectors)
    output_size: int  # classes or output dimension
    token_inputs: bool
    hidden_size: int = 50
    num_layers: int = 1
    embedding_size: int = 50
    dropout: float = 0.0
    tie_weights: bool = False
    init: Init = Init.paper


def paper_init_(module: nn.Module) -> None:
    """The paper's initial weights (NOTES §4): every matrix (a parameter of dim > 1: the
    embedding, the input layer, the recurrent core's stacked gate matrices and the decoder,
    tied or not) uniform in ±sqrt(3 / max(rows, cols)); every vector (the biases) zero.

    With it an untrained language model predicts close to uniformly (perplexity ≈ the
    vocabulary size); PyTorch's N(0, 1) embedding, tied to the decoder, starts far above it.
    Draws from the global torch RNG, in ``named_parameters`` order (shared tensors once)."""
    with torch.no_grad():
        for _, param in module.named_parameters():
            if param.dim() > 1:
                bound = (3.0 / max(param.shape[0], param.shape[1])) ** 0.5
                param.uniform_(-bound, bound)
            else:
                param.zero_()


class RNNModel(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        if spec.token_inputs:
            self.encoder: nn.Module = nn.Embedding(spec.input_size, spec.embedding_size)
        else:
            self.encoder = nn.Linear(spec.input_size, spec.embedding_size)
        self.drop = nn.Dropout(spec.dropout)
        core_cls = _CORES[spec.cell]
        kwargs = {"nonlinearity": "tanh"} if spec.cell == Cell.srnn else {}
        self.core = core_cls(spec.embedding_size, spec.hidden_size, spec.num_layers,
                             dropout=spec.dropout if spec.num_layers > 1 else 0.0, **kwargs)
        self.decoder = nn.Linear(spec.hidden_size, spec.output_size)
        if spec.tie_weights:
            if not (spec.token_inputs and spec.input_size == spec.output_size
                    and spec.embedding_size == spec.hidden_size):
                raise ValueError("tie_weights needs token inputs, equal vocabularies and "
                                 "embedding_size == hidden_size")
            self.decoder.weight = self.encoder.weight
        if spec.init == Init.paper:
            paper_init_(self)

    @property
    def is_lstm(self) -> bool:
        return self.spec.cell == Cell.lstm

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        shape = (self.spec.num_layers, batch_size, self.spec.hidden_size)
        dtype = self.decoder.weight.dtype
        h = torch.zeros(shape, device=device, dtype=dtype)
        return (h, torch.zeros(shape, device=device, dtype=dtype)) if self.is_lstm else h

    def recur(self, x: Tensor, state: State) -> Tuple[Tensor, State]:
        """Run the recurrent core only: returns top-layer hidden ``[T, B, H]`` and the state."""
        return self.core(self.embed(x), state)

    def embed(self, x: Tensor) -> Tensor:
        """Encoder and input dropout, ``[T, B, E]``: ``recur(x, s) == core(embed(x), s)``.

        Embedding a window once and running the core over slices of it gives the encoder one
        dense gradient (one zero-fill of a vocabulary-sized buffer) instead of one per slice."""
        return self.drop(self.encoder(x))

    def decode(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.drop(hidden))

    def forward(self, x: Tensor, state: State) -> Tuple[Tensor, State]:
        hidden, state = self.recur(x, state)
        return self.decode(hidden), state

    @staticmethod
    def state_output(state: State) -> Tensor:
        """Top-layer h of a state, ``[1, B, H]``: what the decoder reads after the last step.

        Decoding from the state (not from ``recur``'s output tensor) keeps the loss a function
        of the state node, so gradients with respect to the state at lag 0 are non-zero."""
        h = state[0] if isinstance(state, tuple) else state
        return h[-1:]


def detach_state(state: State) -> State:
    """Cut the graph at the state (carry the value into the next chunk)."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def state_to(state: State, device: torch.device | str) -> State:
    if isinstance(state, tuple):
        return tuple(s.to(device) for s in state)
    return state.to(device)


def select_streams(state: State, index: Tensor) -> State:
    """State of the streams ``index`` (batch dimension 1)."""
    if isinstance(state, tuple):
        return tuple(s[:, index] for s in state)
    return state[:, index]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
