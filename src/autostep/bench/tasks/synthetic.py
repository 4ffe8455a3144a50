"""Synthetic problems whose optimum is known exactly, so the train loss is a suboptimality.

* ``quadratic``  DeepOBS's noisy quadratic: 100-d, Hessian with 90 eigenvalues in [0, 1] and 10 in
  [30, 60]; batch loss ``mean_i 0.5 (θ - x_i)ᵀ H (θ - x_i)``; the optimum over the training set is
  ``0.5 (θ - x̄)ᵀ H (θ - x̄)`` away.
* ``matfac`` / ``matfac_k4``  the SLS paper's matrix factorisation: a linear network ``W2 W1`` (inner
  width 10: interpolating, or 4: not) fit to ``y = A x`` with ``A`` 10×6 of condition number 1e10;
  the optimum is computed exactly (0, or the best rank-4 fit).
"""

from __future__ import annotations

import torch
from torch import nn

from .task import Task, seeded

__all__ = ["quadratic", "matfac", "matfac_k4"]


class _Theta(nn.Module):
    def __init__(self, dim: int, h: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(torch.ones(dim))
        self.register_buffer("h", h)


def quadratic(seed: int = 0, data_dir=None, dim: int = 100, n_train: int = 1000,
              batch_size: int = 32) -> Task:
    """DeepOBS's noisy quadratic; the problem is fixed, ``seed`` moves θ0 (and the bench's data order)."""
    g = torch.Generator().manual_seed(42)
    eig = torch.cat([torch.rand(dim - 10, generator=g), 30 + 30 * torch.rand(10, generator=g)])
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    h = (q * eig) @ q.T
    h = 0.5 * (h + h.T)
    xs = torch.randn(n_train + 2000, dim, generator=g)
    train, val, test = (xs[:n_train],), (xs[n_train:n_train + 1000],), (xs[n_train + 1000:],)
    xbar = train[0].mean(0)
    centered = train[0] - xbar
    optimum = float(0.5 * ((centered @ h) * centered).sum(1).mean())
    with seeded(seed):
        model = _Theta(dim, h)
        with torch.no_grad():
            model.theta.add_(0.1 * torch.randn(dim))

    def loss_fn(m, batch):
        d = m.theta - batch[0]
        return 0.5 * ((d @ m.h) * d).sum(1).mean()

    def eval_fn(m, data):
        loss = float(loss_fn(m, data))
        return loss, loss

    return Task("quadratic", model, loss_fn, train, val, test, batch_size, "loss", False,
                optimum=optimum, exact_optimum=True, eval_fn=eval_fn)


def _matfac(name: str, inner: int, seed: int) -> Task:
    g = torch.Generator().manual_seed(43)
    u, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -10, 6, dtype=torch.float64)  # condition number 1e10
    a = u[:, :6] @ torch.diag(s) @ v.T
    x = torch.randn(1000 + 400, 6, generator=g, dtype=torch.float64)
    y = x @ a.T
    x, y = x.float(), y.float()
    train, val, test = (x[:1000], y[:1000]), (x[1000:1200], y[1000:1200]), (x[1200:], y[1200:])
    if inner >= 6:
        optimum = 0.0
    else:  # best rank-k linear map on the training inputs (reduced-rank regression)
        xt, yt = train[0].double(), train[1].double()
        b_full = torch.linalg.lstsq(xt, yt).solution  # 6 x 10
        fitted = xt @ b_full
        _, _, vh = torch.linalg.svd(fitted, full_matrices=False)
        p = vh[:inner].T @ vh[:inner]
        resid = yt - fitted @ p
        optimum = float((resid ** 2).sum(1).mean() / 10)
    with seeded(seed):
        model = nn.Sequential(nn.Linear(6, inner, bias=False), nn.Linear(inner, 10, bias=False))

    def loss_fn(m, batch):
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    def eval_fn(m, data):
        loss = float(loss_fn(m, data))
        return loss, loss

    return Task(name, model, loss_fn, train, val, test, 20, "loss", False, optimum=optimum,
                exact_optimum=True, eval_fn=eval_fn, info={"inner": inner})


def matfac(seed: int = 0, data_dir=None) -> Task:
    """Matrix factorisation with inner width 10 (interpolating: the optimum is 0)."""
    return _matfac("matfac", 10, seed)


def matfac_k4(seed: int = 0, data_dir=None) -> Task:
    """Matrix factorisation with inner width 4 (the optimum is the best rank-4 fit)."""
    return _matfac("matfac_k4", 4, seed)
