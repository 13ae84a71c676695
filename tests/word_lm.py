"""A model of pytorch/examples' word_language_model shape, for the estimator's tests.

The decoder reads the recurrent layer's *output sequence*; ``nn.LSTM``'s output tensor is
not its ``h_n`` node, so the loss does not depend on the state ``forward`` returns.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WordLM(nn.Module):
    """Encoder, ``nn.LSTM``/``nn.GRU`` (``rnn_type``), decoder; ``forward(x [T, B], hidden)``
    -> (logits ``[T, B, V]``, hidden), or with ``flat=True`` the current example's
    (log-softmax ``[T*B, V]``, hidden), for ``nn.NLLLoss``."""

    def __init__(self, rnn_type: str, vocab: int, emsize: int, hidden: int, layers: int,
                 dropout: float = 0.0, flat: bool = False):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, emsize)
        self.rnn = getattr(nn, rnn_type)(emsize, hidden, layers, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)
        self.rnn_type, self.hidden, self.layers, self.flat = rnn_type, hidden, layers, flat

    def forward(self, x, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        decoded = self.decoder(self.drop(output))
        if self.flat:
            return F.log_softmax(decoded.view(-1, decoded.shape[-1]), dim=1), hidden
        return decoded, hidden

    def init_hidden(self, batch_size: int):
        weight = next(self.parameters())
        h = weight.new_zeros(self.layers, batch_size, self.hidden)
        return ((h, weight.new_zeros(self.layers, batch_size, self.hidden))
                if self.rnn_type == "LSTM" else h)


class WordLMRecurDecode(WordLM):
    """The same model with ``adaptive.RecurDecode`` but no ``state_output``: the fast path,
    the last step decoded from ``recur``'s output (lag 0 = the state entering it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decode_calls = []  # lengths T of the hidden sequences decoded

    def recur(self, x, hidden):
        return self.rnn(self.drop(self.encoder(x)), hidden)

    def decode(self, hidden):
        self.decode_calls.append(hidden.shape[0])
        return self.decoder(self.drop(hidden))


class WordLMStateReadout(WordLMRecurDecode):
    """The whole protocol: ``state_output`` reads the top layer of the returned h (lag 0 = the
    state after the last step)."""

    @staticmethod
    def state_output(hidden):
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        return h[-1:]


def copy_weights(dst: nn.Module, src: nn.Module) -> nn.Module:
    dst.load_state_dict(src.state_dict())
    return dst


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def per_window(grads, S: int) -> torch.Tensor:
    """State gradients ``[L, S, H]`` (h, c) -> one vector per window ``[S, D]``."""
    return torch.cat([g.transpose(0, 1).reshape(S, -1) for g in grads], 1)
