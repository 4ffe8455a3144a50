"""Small real-data problems that work offline (used by the demo, the diagnostics and the tests).

* :func:`digits_mlp` -- scikit-learn's bundled 8x8 digits (1797 images, 10 classes), an MLP.
* :func:`fashion_mnist_mlp` -- Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``) or any folder with the standard IDX gzip files; returns
  ``None`` when the data is absent (never downloads, never fakes data).

A :class:`Problem` bundles a freshly initialised model (seeded), a ``loss_fn(model, batch)``, and
train/validation/test tensors; :meth:`Problem.batches` yields shuffled mini-batches reproducibly.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
from torch import nn

__all__ = [
    "Problem",
    "epoch_batches",
    "digits_mlp",
    "fashion_mnist_mlp",
    "load_fashion_mnist",
    "FASHION_MNIST_DIRS",
]

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


def epoch_batches(tensors: tuple, n: int, batch_size: int, generator: torch.Generator) -> Iterator[tuple]:
    """``n`` mini-batches of rows of ``tensors`` (same first dimension), drawn epoch by epoch from
    permutations made with ``generator``; a last partial batch of an epoch is dropped."""
    size = len(tensors[0])
    perm, pos = torch.randperm(size, generator=generator), 0
    for _ in range(n):
        if pos + batch_size > size:
            perm, pos = torch.randperm(size, generator=generator), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        yield tuple(t[idx] for t in tensors)


def cross_entropy_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


@dataclass
class Problem:
    """A classification problem with fixed splits.

    ``model`` is initialised from ``seed``; ``batches(n, seed)`` yields ``n`` mini-batches
    ``(x, y)`` drawn by epochs of a seeded permutation of the training set.
    """

    name: str
    model: nn.Module
    loss_fn: Callable[[nn.Module, tuple], torch.Tensor]
    train: tuple
    val: tuple
    test: tuple
    batch_size: int = 64
    info: dict = field(default_factory=dict)

    def batches(self, n: int, seed: int = 0, batch_size: Optional[int] = None) -> Iterator[tuple]:
        return epoch_batches(self.train, n, batch_size or self.batch_size, torch.Generator().manual_seed(seed))

    def batch_list(self, n: int, seed: int = 0, batch_size: Optional[int] = None) -> list:
        return list(self.batches(n, seed, batch_size))

    @torch.no_grad()
    def evaluate(self, split: str = "test", model: Optional[nn.Module] = None) -> dict:
        """Mean loss and accuracy on a split, in eval mode (the model's mode is restored)."""
        model = self.model if model is None else model
        x, y = getattr(self, split)
        was_training = model.training
        model.eval()
        try:
            losses, correct = [], 0
            for i in range(0, len(x), 1024):
                out = model(x[i:i + 1024])
                losses.append(nn.functional.cross_entropy(out, y[i:i + 1024], reduction="sum"))
                correct += int((out.argmax(1) == y[i:i + 1024]).sum())
            return {"loss": float(torch.stack(losses).sum()) / len(x), "accuracy": correct / len(x)}
        finally:
            model.train(was_training)


def _split(x: torch.Tensor, y: torch.Tensor, seed: int, fractions=(0.7, 0.15)):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    n_tr = int(fractions[0] * len(x))
    n_va = int(fractions[1] * len(x))
    tr, va, te = perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]
    return (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te])


def mlp(sizes, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def digits_mlp(seed: int = 0, hidden=(64,), batch_size: int = 64, dropout: float = 0.0,
               split_seed: int = 1234) -> Problem:
    """scikit-learn digits (pixels scaled to [0, 1]), MLP 64-hidden-10, 70/15/15 split.

    The split is fixed by ``split_seed``; ``seed`` sets the model's initialisation.
    """
    from sklearn.datasets import load_digits

    xs, ys = load_digits(return_X_y=True)
    x = torch.tensor(xs / 16.0, dtype=torch.float32)
    y = torch.tensor(ys, dtype=torch.long)
    train, val, test = _split(x, y, split_seed)
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        model = mlp((64, *hidden, 10), dropout)
    return Problem("digits_mlp", model, cross_entropy_loss, train, val, test, batch_size)


def _read_idx(path: str) -> torch.Tensor:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    t = torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8)
    return t.reshape(shape)


def _find(data_dir: str, stem: str) -> Optional[str]:
    for name in (stem + "-ubyte.gz", stem + "-ubyte", stem + ".gz", stem):
        p = os.path.join(data_dir, name)
        if os.path.exists(p):
            return p
    return None


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(data_dir: Optional[str] = None):
    """``(x_train, y_train, x_test, y_test)`` as float tensors in [0, 1] and long labels, or ``None``.

    Looks in ``data_dir`` or the Debian package's folder for ``train-images-idx3-ubyte.gz`` etc.
    The result is cached per folder: treat the tensors as read-only.
    """
    dirs = [data_dir] if data_dir else list(FASHION_MNIST_DIRS)
    for d in dirs:
        if not d or not os.path.isdir(d):
            continue
        paths = [_find(d, s) for s in ("train-images-idx3", "train-labels-idx1",
                                        "t10k-images-idx3", "t10k-labels-idx1")]
        if all(paths):
            xtr, ytr, xte, yte = (_read_idx(p) for p in paths)
            return (xtr.float().div_(255.0), ytr.long(), xte.float().div_(255.0), yte.long())
    return None


def fashion_mnist_mlp(seed: int = 0, hidden=(256, 128), batch_size: int = 128,
                      data_dir: Optional[str] = None, val_size: int = 10000) -> Optional[Problem]:
    """Fashion-MNIST, MLP 784-256-128-10; the last ``val_size`` training images are validation.

    Returns ``None`` when the data is not installed (``apt-get install dataset-fashion-mnist``).
    """
    data = load_fashion_mnist(data_dir)
    if data is None:
        return None
    xtr, ytr, xte, yte = data
    xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    train = (xtr[:-val_size], ytr[:-val_size])
    val = (xtr[-val_size:], ytr[-val_size:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = mlp((784, *hidden, 10))
    return Problem("fmnist_mlp", model, cross_entropy_loss, train, val, (xte, yte), batch_size)
