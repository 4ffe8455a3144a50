"""``digits_mlp``: scikit-learn's bundled 8x8 digits (1797 images, 10 classes, offline), an MLP."""

from __future__ import annotations

import torch

from .task import Task, cross_entropy, mlp, seeded

__all__ = ["digits_mlp"]


def _split(x: torch.Tensor, y: torch.Tensor, seed: int, fractions=(0.7, 0.15)):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    n_tr = int(fractions[0] * len(x))
    n_va = int(fractions[1] * len(x))
    tr, va, te = perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]
    return (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te])


def digits_mlp(seed: int = 0, data_dir=None, hidden=(64,), batch_size: int = 64, dropout: float = 0.0,
               split_seed: int = 1234) -> Task:
    """Digits (pixels scaled to [0, 1]), MLP 64-``hidden``-10, a 70/15/15 split fixed by
    ``split_seed``; ``seed`` sets the model's initialisation.  ``data_dir`` is unused (the data
    ships with scikit-learn)."""
    from sklearn.datasets import load_digits

    xs, ys = load_digits(return_X_y=True)
    x = torch.tensor(xs / 16.0, dtype=torch.float32)
    y = torch.tensor(ys, dtype=torch.long)
    train, val, test = _split(x, y, split_seed)
    with seeded(seed):
        model = mlp((64, *hidden, 10), dropout)
    return Task("digits_mlp", model, cross_entropy, train, val, test, batch_size, "accuracy", True)
