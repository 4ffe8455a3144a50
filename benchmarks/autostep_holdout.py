"""Autostep on problems the benchmark suite does not contain (a check against tuning to the bench).

Problems (all offline, none in ``autostep bench``): a GRU character model on Python's ``pydoc_data``
text, a plain MLP classifier on scikit-learn's breast-cancer set, an MLP regressor (MSE) on the
diabetes set, a convolution-free autoencoder on the digits images, and a 4-layer BatchNorm+dropout
MLP on Fashion-MNIST (skipped when the Debian dataset is missing).

For each problem and seed it trains Adam + warm-up + cosine on the half-decade grid 1e-4 .. 1e-1 and
reports the grid's best final train loss, then the train loss of each other method as a multiple of
it.  Usage::

    python benchmarks/autostep_holdout.py [--seeds 2] [--workers 2] [--methods Autostep Prodigy-cosine]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

GRID = tuple(1e-4 * 10 ** (k / 2) for k in range(7))


def _batches(x, y, bs, steps, seed):
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    out, perm, i = [], torch.randperm(n, generator=g), 0
    for _ in range(steps):
        if i + bs > n:
            perm, i = torch.randperm(n, generator=g), 0
        idx = perm[i:i + bs]
        i += bs
        out.append((x[idx], y[idx]))
    return out


def problem(name, seed):
    """(model, loss_fn(model, batch), train_batches(steps, seed), probe batches, full train data, steps)."""
    torch.manual_seed(seed)
    if name == "gru_pydoc":
        from pydoc_data.topics import topics
        text = "".join(topics.values())[:200_000]
        chars = sorted(set(text))
        data = torch.tensor([chars.index(c) for c in text])
        ctx, V = 48, len(chars)

        class GRU(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(V, 48)
                self.rnn = nn.GRU(48, 96, batch_first=True)
                self.out = nn.Linear(96, V)

            def forward(self, idx):
                return self.out(self.rnn(self.emb(idx))[0])

        model = GRU()
        starts = torch.arange(0, data.numel() - ctx - 1, 7)
        x = torch.stack([data[s:s + ctx] for s in starts])
        y = torch.stack([data[s + 1:s + ctx + 1] for s in starts])

        def loss_fn(m, b):
            return F.cross_entropy(m(b[0]).reshape(-1, V), b[1].reshape(-1))
        return model, loss_fn, (x, y), 32, 300
    if name in ("mlp_cancer", "mlp_diabetes"):
        from sklearn.datasets import load_breast_cancer, load_diabetes
        d = load_breast_cancer() if name == "mlp_cancer" else load_diabetes()
        x = torch.tensor(d.data, dtype=torch.float32)
        x = (x - x.mean(0)) / (x.std(0) + 1e-8)
        if name == "mlp_cancer":
            y = torch.tensor(d.target)
            model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
            return model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), (x, y), 32, 400
        y = torch.tensor(d.target, dtype=torch.float32)
        y = (y - y.mean()) / y.std()
        model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 1))
        return model, lambda m, b: F.mse_loss(m(b[0]).squeeze(-1), b[1]), (x, y), 32, 400
    if name == "ae_digits":
        from sklearn.datasets import load_digits
        x = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 32), nn.ReLU(),
                              nn.Linear(32, 64))
        return model, lambda m, b: F.mse_loss(m(b[0]), b[0]), (x, x), 64, 500
    raise ValueError(name)


def _fmnist_bn(seed):
    import gzip
    import numpy as np
    root = "/usr/share/datasets/fashion-mnist"
    with gzip.open(f"{root}/train-images-idx3-ubyte.gz") as f:
        xs = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[:20000]
    with gzip.open(f"{root}/train-labels-idx1-ubyte.gz") as f:
        ys = np.frombuffer(f.read(), np.uint8, offset=8)[:20000]
    x = torch.tensor(xs, dtype=torch.float32) / 255.0
    y = torch.tensor(ys, dtype=torch.long)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))
    return model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), (x, y), 128, 400


PROBLEMS = ("gru_pydoc", "mlp_cancer", "mlp_diabetes", "ae_digits", "bnmlp_fmnist")


def _build(name, seed):
    return _fmnist_bn(seed) if name == "bnmlp_fmnist" else problem(name, seed)


def _cosine(t, total, warm):
    if t < warm:
        return (t + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warm) / max(1, total - warm))))


@torch.no_grad()
def _full_loss(model, loss_fn, data):
    model.eval()
    x, y = data
    total, n = 0.0, 0
    for i in range(0, x.shape[0], 1024):
        b = (x[i:i + 1024], y[i:i + 1024])
        total += float(loss_fn(model, b)) * b[0].shape[0]
        n += b[0].shape[0]
    model.train()
    return total / n


def run(args):
    name, method, lr, seed = args
    torch.set_num_threads(1)
    model, loss_fn, data, bs, steps = _build(name, seed)
    batches = _batches(*data, bs, steps, seed)
    probe = _batches(*data, bs, 2, seed + 7919)
    params = list(model.parameters())
    sched = None
    if method == "Adam-cosine":
        opt = torch.optim.Adam(params, lr=lr)
        sched = lambda t: lr * _cosine(t, steps, max(1, steps // 20))  # noqa: E731
    elif method == "Prodigy-cosine":
        from prodigyopt import Prodigy
        opt = Prodigy(params, lr=1.0)
        sched = lambda t: _cosine(t, steps, max(1, steps // 20))  # noqa: E731
    elif method.startswith("Autostep"):
        from autostep import registry
        opt = registry.get(method).build(params, {"total_steps": steps, "model": model, "loss_fn": loss_fn,
                                                  "probe_data": probe})
    else:
        raise ValueError(method)
    sf = hasattr(opt, "eval") and getattr(opt, "param_groups", [{}])[0].get("total_steps", 1) is None
    for t, b in enumerate(batches):
        if sched is not None:
            for g in opt.param_groups:
                g["lr"] = sched(t)
        opt.zero_grad()
        loss = loss_fn(model, b)
        if not torch.isfinite(loss):
            return name, method, lr, seed, math.nan, None
        loss.backward()
        opt.step()
    if sf:
        opt.eval()
    peak = opt.param_groups[0].get("peak_lr")
    return name, method, lr, seed, _full_loss(model, loss_fn, data), peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    ap.add_argument("--methods", nargs="+", default=["Autostep", "Prodigy-cosine"])
    a = ap.parse_args()
    if not os.path.exists("/usr/share/datasets/fashion-mnist") and "bnmlp_fmnist" in a.problems:
        a.problems.remove("bnmlp_fmnist")
        print("bnmlp_fmnist skipped: apt-get install dataset-fashion-mnist")
    jobs = [(p, "Adam-cosine", lr, s) for p in a.problems for s in range(a.seeds) for lr in GRID]
    jobs += [(p, m, None, s) for p in a.problems for s in range(a.seeds) for m in a.methods]
    with ProcessPoolExecutor(a.workers) as pool:
        res = list(pool.map(run, jobs))
    print("| problem | seed | tuned peak | tuned loss | " + " | ".join(a.methods) + " |")
    print("|---|---|---|---|" + "---|" * len(a.methods))
    for p in a.problems:
        for s in range(a.seeds):
            grid = [(r[4], r[2]) for r in res if r[0] == p and r[3] == s and r[1] == "Adam-cosine" and math.isfinite(r[4])]
            best, blr = min(grid)
            cells = []
            for m in a.methods:
                r = next(r for r in res if r[0] == p and r[3] == s and r[1] == m)
                peak = f" (peak {r[5]:.2g})" if r[5] else ""
                cells.append(f"{r[4] / best:.3f}{peak}" if math.isfinite(r[4]) else "diverged")
            print(f"| {p} | {s} | {blr:.2g} | {best:.4g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
