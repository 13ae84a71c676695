"""atbptt: adaptive truncated backpropagation through time (Aicher, Foti, Fox; UAI 2019).

Importing the package before torch turns on PyTorch's transparent-huge-page allocation for
CPU tensors of 2 MiB and more (``THP_MEM_ALLOC_ENABLE``, read once when torch allocates).
Training allocates and frees tensors of tens of MiB every chunk (the logits of a 10k-word
vocabulary); with 4 KiB pages each one costs thousands of page faults. On our CPU VM a lean
overlap step (LSTM 1x200, 10k words, K=35, batch 32) took 1.96 s per 6 chunks without and
1.67-1.95 s with it (best of 3, three processes each). Set ``THP_MEM_ALLOC_ENABLE=0`` to turn it
off; it has no effect if torch was imported first.
"""
import os as _os
import sys as _sys

if _sys.platform.startswith("linux"):
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__all__ = ["AdaptiveTruncation"]


def __getattr__(name):
    """``atbptt.AdaptiveTruncation``, imported on first use so that ``import atbptt`` stays
    light (the analysis scripts never load torch)."""
    if name == "AdaptiveTruncation":
        from .controller import AdaptiveTruncation

        return AdaptiveTruncation
    raise AttributeError(f"module 'atbptt' has no attribute {name!r}")
