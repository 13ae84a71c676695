"""The memory a run will hold, estimated from its config before anything is built or written,
and the refusal of a run that cannot fit.

``estimate(cfg)`` adds up what a run keeps alive at its peak, in bytes: the parameters (with
their gradients and the checkpoint's copy), the training graph of one chunk (the states of its
2K-1 steps for ``method.style=overlap``, K for ``chunk``, and the logits of its K decoded
steps), the estimator's windows (the states of ``method.num_windows`` windows of
``method.window`` steps, all kept for one backward pass, and their inputs), the data streams,
and one evaluation chunk. The estimate counts only what cannot be avoided (the activations
torch saves per step are counted low), so a run it refuses cannot fit; a run it accepts may
still need more. ``check(cfg, device)`` compares it with ``max_memory`` (GiB) or else the
memory this machine has available (``MemAvailable``, capped by a cgroup limit; on CUDA, the
GPU's free memory for what lives there) and raises ``ConfigError`` with one line naming the
estimate, the limit and the keys behind the largest part.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from .config import Cell, Config, ConfigError, DatasetName, MethodName, Style
from .data import TOKENS, VOCAB_SIZES

FLOAT, INDEX = 4, 8  # bytes of a float32 value, of an int64 token id
GATES = {Cell.lstm: 4, Cell.gru: 3, Cell.srnn: 1}
# floats torch keeps per step, stream, layer and hidden unit for the backward pass (a low count:
# LSTM the gates, cell and output; GRU the gates and output; tanh RNN the pre-activation and output)
SAVED = {Cell.lstm: 6, Cell.gru: 4, Cell.srnn: 2}
# vocabulary and tokens of the corpora's verified files (data/download.py checks them)
CORPUS_VOCAB = {DatasetName(name): size for name, size in VOCAB_SIZES.items()}
CORPUS_TOKENS = {DatasetName(name): tokens for name, tokens in TOKENS.items()}
GIB = 2 ** 30


@dataclass
class Part:
    what: str  # what holds the memory, with the keys that size it
    host: int  # bytes in the machine's memory
    device: int = 0  # bytes on the run's device (moved to host memory on the CPU)


def sizes(cfg: Config) -> Tuple[int, int, bool]:
    """(input size, output size, token inputs) of the dataset, known from the config alone."""
    d = cfg.dataset
    if d.name in CORPUS_VOCAB:
        return CORPUS_VOCAB[d.name], CORPUS_VOCAB[d.name], True
    if d.name == DatasetName.linear:
        return d.input_dim, d.output_dim, False
    if d.name == DatasetName.var:
        return d.dim, d.dim, False
    return d.num_symbols, d.num_symbols, True


def size_keys(cfg: Config) -> str:
    """The keys that set the dataset's input and output sizes (for messages)."""
    name = cfg.dataset.name
    if name in CORPUS_VOCAB:
        return f"the {CORPUS_VOCAB[name]}-word vocabulary of dataset={name.value}"
    return {DatasetName.linear: "dataset.input_dim, dataset.output_dim",
            DatasetName.var: "dataset.dim"}.get(name, "dataset.num_symbols")


def parameters(cfg: Config) -> int:
    """The model's parameter count (as ``models.RNNModel`` builds it)."""
    m = cfg.model
    n_in, n_out, tokens = sizes(cfg)
    count = n_in * m.embedding_size + (0 if tokens else m.embedding_size)
    gates, h = GATES[m.cell], m.hidden_size
    for layer in range(m.num_layers):
        width = m.embedding_size if layer == 0 else h
        count += gates * h * (width + h) + 2 * gates * h
    return count + (0 if m.tie_weights else h * n_out) + n_out


def estimate(cfg: Config) -> List[Part]:
    """The parts of the run's peak memory, in bytes (see the module's docstring)."""
    m, d, method = cfg.model, cfg.dataset, cfg.method
    n_in, n_out, tokens = sizes(cfg)
    per_step = m.num_layers * m.hidden_size * SAVED[m.cell] + m.embedding_size
    # a chunk fits its split
    K = min(cfg.K, d.train_length) if d.name not in CORPUS_TOKENS else cfg.K
    steps = 2 * K - 1 if method.style == Style.overlap and method.name != MethodName.artbp else K
    parts = [
        Part("the parameters, their gradients and the checkpoint's copy (model.hidden_size, "
             f"model.num_layers, model.embedding_size, {size_keys(cfg)})", 0,
             3 * FLOAT * parameters(cfg)),
        Part(f"the training graph of {steps} steps (K, method.style, dataset.batch_size, "
             "model.hidden_size, model.num_layers, model.embedding_size)", 0,
             FLOAT * steps * d.batch_size * per_step),
        Part(f"the logits of {K} steps (K, dataset.batch_size, {size_keys(cfg)})", 0,
             2 * FLOAT * K * d.batch_size * n_out),
        Part("one evaluation chunk (dataset.eval_chunk, dataset.eval_batch_size, "
             f"{size_keys(cfg)}, model.hidden_size, model.num_layers)", 0,
             FLOAT * d.eval_chunk * d.eval_batch_size * (n_out + m.num_layers * m.hidden_size)),
        _data(cfg, n_in, n_out, tokens),
    ]
    if method.name == MethodName.adaptive or method.log_estimates > 0 or method.audit:
        span = method.burn_in + method.window
        parts.append(Part(
            "the estimator's windows (method.num_windows, method.window, method.burn_in, "
            "model.hidden_size, model.num_layers, model.embedding_size)",
            method.num_windows * span * (INDEX if tokens else FLOAT * n_in),
            FLOAT * method.num_windows * method.window * (per_step + m.num_layers * m.hidden_size)))
    return parts


def _data(cfg: Config, n_in: int, n_out: int, tokens: bool) -> Part:
    d = cfg.dataset
    if d.name in CORPUS_TOKENS:
        total = sum(CORPUS_TOKENS[d.name].values())
        return Part("the corpus (dataset.name)", 2 * INDEX * total)
    cells = d.train_length * d.batch_size + 2 * d.eval_length * d.eval_batch_size
    # token streams: inputs and targets; vectors: float64 while generated, then float32
    per_cell = 2 * INDEX if tokens else (8 + FLOAT) * (n_in + n_out)
    return Part("the data streams (dataset.train_length, dataset.batch_size, dataset.eval_length, "
                "dataset.eval_batch_size)", per_cell * cells)


def available(device_type: str = "cpu") -> Tuple[Optional[int], Optional[int]]:
    """(host bytes available, device bytes free); None where unknown."""
    host = _meminfo_available()
    limit = _cgroup_room()
    if limit is not None:
        host = limit if host is None else min(host, limit)
    gpu = None
    if device_type == "cuda":
        import torch

        gpu = int(torch.cuda.mem_get_info()[0])
    return host, gpu


def check(cfg: Config, device_type: str = "cpu") -> None:
    """Refuse (``ConfigError``, one line) a run whose estimate exceeds ``max_memory`` GiB, or
    the memory available here when ``max_memory`` is null."""
    parts = estimate(cfg)
    on_gpu = device_type == "cuda"
    host_need = sum(p.host + (0 if on_gpu else p.device) for p in parts)
    gpu_need = sum(p.device for p in parts) if on_gpu else 0
    if cfg.max_memory is not None:
        host, gpu, source = int(cfg.max_memory * GIB), int(cfg.max_memory * GIB), "max_memory"
    else:
        (host, gpu), source = available(device_type), "available on this machine"
    for need, room, where in ((host_need, host, "memory"), (gpu_need, gpu, "GPU memory")):
        if room is None or need <= room:
            continue
        largest = max(parts, key=lambda p: p.device if where == "GPU memory" else p.host + p.device)
        raise ConfigError(
            f"this run would hold at least {need / GIB:.3g} GiB of {where} and "
            f"{room / GIB:.3g} GiB are {source}; the largest part is {largest.what}: "
            "make it smaller"
            + ("" if cfg.max_memory is not None else
               ", or set max_memory (GiB) if more memory will be free when the run starts"))


def _meminfo_available() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> Optional[int]:
    """The cgroup's memory limit minus its usage (v2, else v1); None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 2 ** 60:
                return None
            return max(int(limit) - int(Path(usage_file).read_text().strip()), 0)
        except (OSError, ValueError):
            continue
    return None
