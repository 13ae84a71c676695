"""Synthetic regression tasks: a linear state-space model and a VAR(p) process, each drawn
from its own generator seeded by ``dataset.seed``, with its true spectral radius recorded."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from ..config import DatasetConfig
from .streams import Split, TaskData, make_task


# ---------------------------------------------------------------- linear state space
def random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def linear_system(cfg: DatasetConfig, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """``A = rho * Q`` with Q orthogonal, so every eigenvalue of A has modulus rho exactly."""
    n, d_u, d_y = cfg.state_dim, cfg.input_dim, cfg.output_dim
    return {
        "A": cfg.rho * random_orthogonal(n, rng),
        "B": rng.standard_normal((n, d_u)) / np.sqrt(d_u),
        "C": rng.standard_normal((d_y, n)) / np.sqrt(n),
        "D": rng.standard_normal((d_y, d_u)) / np.sqrt(d_u),
    }


def linear_streams(system: Dict[str, np.ndarray], length: int, num_streams: int, noise_std: float,
                   rng: np.random.Generator, burn: int = 100) -> Split:
    """z_t = A z_{t-1} + B u_t + e_t,  y_t = C z_t + D u_t + f_t; predict y_t from u_1..u_t."""
    A, B, C, D = system["A"], system["B"], system["C"], system["D"]
    u = rng.standard_normal((length + burn, num_streams, B.shape[1]))
    z = np.zeros((num_streams, A.shape[0]))
    ys = np.empty((length + burn, num_streams, C.shape[0]))
    for t in range(length + burn):
        z = z @ A.T + u[t] @ B.T + noise_std * rng.standard_normal(z.shape)
        ys[t] = z @ C.T + u[t] @ D.T + noise_std * rng.standard_normal((num_streams, C.shape[0]))
    # the burn-in lets the latent state reach its stationary distribution
    return Split(torch.tensor(u[burn:], dtype=torch.float32),
                 torch.tensor(ys[burn:], dtype=torch.float32))


def make_linear(cfg: DatasetConfig) -> TaskData:
    rng = np.random.default_rng(cfg.seed)
    system = linear_system(cfg, rng)
    splits = [linear_streams(system, n, b, cfg.noise_std, rng) for n, b in
              ((cfg.train_length, cfg.batch_size), (cfg.eval_length, cfg.eval_batch_size),
               (cfg.eval_length, cfg.eval_batch_size))]
    rho = float(np.max(np.abs(np.linalg.eigvals(system["A"]))))
    return make_task("linear", *splits, False, cfg.input_dim, cfg.output_dim, False,
                     {"true_rho": rho, "dims": {"input": cfg.input_dim, "state": cfg.state_dim,
                                                "output": cfg.output_dim}})


# ------------------------------------------------------------------------------ VAR(p)
def companion(coefs: np.ndarray) -> np.ndarray:
    """Companion matrix of VAR coefficients ``coefs [p, d, d]`` (shape ``[p*d, p*d]``)."""
    p, d, _ = coefs.shape
    top = np.concatenate(list(coefs), axis=1)
    bottom = np.eye(d * (p - 1), d * p) if p > 1 else np.zeros((0, d))
    return np.concatenate([top, bottom], axis=0)


def var_coefficients(dim: int, order: int, rho: float, rng: np.random.Generator) -> np.ndarray:
    """Random A_1..A_p scaled so the companion matrix has spectral radius ``rho``.

    Scaling A_i by c**i scales every companion eigenvalue by c."""
    coefs = rng.standard_normal((order, dim, dim)) / np.sqrt(dim * order)
    radius = np.max(np.abs(np.linalg.eigvals(companion(coefs))))
    c = rho / radius
    return np.stack([coefs[i] * c ** (i + 1) for i in range(order)])


def var_streams(coefs: np.ndarray, length: int, num_streams: int, noise_std: float,
                rng: np.random.Generator, burn: int = 200) -> Split:
    """x_t = sum_i A_i x_{t-i} + eps_t; inputs x_t, targets x_{t+1} (next-step forecast)."""
    p, d, _ = coefs.shape
    x = np.zeros((length + burn + 1 + p, num_streams, d))
    for t in range(p, x.shape[0]):
        x[t] = sum(x[t - i - 1] @ coefs[i].T for i in range(p))
        x[t] += noise_std * rng.standard_normal((num_streams, d))
    x = x[p + burn:]
    return Split(torch.tensor(x[:-1], dtype=torch.float32),
                 torch.tensor(x[1:], dtype=torch.float32))


def make_var(cfg: DatasetConfig) -> TaskData:
    rng = np.random.default_rng(cfg.seed)
    coefs = var_coefficients(cfg.dim, cfg.order, cfg.rho, rng)
    splits = [var_streams(coefs, n, b, cfg.noise_std, rng) for n, b in
              ((cfg.train_length, cfg.batch_size), (cfg.eval_length, cfg.eval_batch_size),
               (cfg.eval_length, cfg.eval_batch_size))]
    rho = float(np.max(np.abs(np.linalg.eigvals(companion(coefs)))))
    return make_task("var", *splits, False, cfg.dim, cfg.dim, False,
                     {"true_rho": rho,
                      "dims": {"input": cfg.dim, "output": cfg.dim, "order": cfg.order}})
