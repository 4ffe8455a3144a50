"""Fashion-MNIST problems: logistic regression, an MLP, a small CNN, and ResNet-20 (for a GPU).

The data comes from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``)
or any folder with the standard IDX gzip files (``--data-dir``); it is never downloaded.  The last
10000 training images are the validation split; the 10000 test images are the test split.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from typing import Optional

import torch
from torch import nn

from .task import DataMissing, Task, cross_entropy, mlp, seeded

__all__ = ["FASHION_MNIST_DIRS", "load_fashion_mnist", "fmnist_logreg", "fmnist_mlp", "fmnist_cnn",
           "resnet20", "resnet20_fmnist"]

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


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


def _splits(data_dir):
    data = load_fashion_mnist(data_dir)
    if data is None:
        raise DataMissing("Fashion-MNIST not found: apt-get install dataset-fashion-mnist, "
                          "or --data-dir with train-images-idx3-ubyte.gz and the three other IDX files")
    xtr, ytr, xte, yte = data
    return (xtr[:-10000], ytr[:-10000]), (xtr[-10000:], ytr[-10000:]), (xte, yte)


def _flat(d):
    return d[0].reshape(len(d[0]), -1), d[1]


def fmnist_logreg(seed: int = 0, data_dir=None) -> Task:
    """Logistic regression on the 784 pixels."""
    tr, va, te = _splits(data_dir)
    with seeded(seed):
        model = nn.Linear(784, 10)
    return Task("fmnist_logreg", model, cross_entropy, _flat(tr), _flat(va), _flat(te), 128, "accuracy", True)


def fmnist_mlp(seed: int = 0, data_dir=None) -> Task:
    """MLP 784-256-128-10, batch 128."""
    tr, va, te = _splits(data_dir)
    with seeded(seed):
        model = mlp((784, 256, 128, 10))
    return Task("fmnist_mlp", model, cross_entropy, _flat(tr), _flat(va), _flat(te), 128, "accuracy", True)


def fmnist_cnn(seed: int = 0, data_dir=None) -> Task:
    """A small CNN (two conv + pool stages, 64 hidden units) on 14×14 inputs (2×2 average-pooled)."""
    tr, va, te = _splits(data_dir)
    small = lambda d: (nn.functional.avg_pool2d(d[0].unsqueeze(1), 2), d[1])  # noqa: E731
    with seeded(seed):
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 3 * 3, 64), nn.ReLU(), nn.Linear(64, 10),
        )
    return Task("fmnist_cnn", model, cross_entropy, small(tr), small(va), small(te), 128, "accuracy", True)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = nn.functional.relu(self.b1(self.c1(x)))
        return nn.functional.relu(self.b2(self.c2(out)) + self.short(x))


def resnet20(in_channels: int = 1, classes: int = 10) -> nn.Module:
    """ResNet-20 of He et al. for 32x32 inputs (3 stages of 3 basic blocks, 16/32/64 channels)."""
    layers: list = [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for k in range(3):
            layers.append(_BasicBlock(cin, cout, stride if k == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)]
    return nn.Sequential(*layers)


def resnet20_fmnist(seed: int = 0, data_dir=None) -> Task:
    """ResNet-20 on Fashion-MNIST padded to 32x32; for ``--device cuda`` (slow on a CPU)."""
    tr, va, te = _splits(data_dir)
    pad = lambda d: (nn.functional.pad(d[0].unsqueeze(1), (2, 2, 2, 2)), d[1])  # noqa: E731
    with seeded(seed):
        model = resnet20()
    return Task("resnet20_fmnist", model, cross_entropy, pad(tr), pad(va), pad(te), 128, "accuracy", True)
