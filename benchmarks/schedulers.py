"""Forwards per step of the line searches under learning-rate schedulers (issue 10 item 4).

    PYTHONPATH=src python benchmarks/schedulers.py [--steps 300] [--methods SALSA,SLS,ALSALS-smooth]

Each row trains a small MLP on Fashion-MNIST-shaped synthetic data (batch 64) with one scheduler
stepped every step, and prints forwards/step, the mean applied step size over the last 10 % of
the steps, and the final training loss.  "HF linear" is transformers'
``get_linear_schedule_with_warmup`` (no warm-up, the Trainer's default), "HF linear+warmup" with
10 % warm-up; "constant LambdaLR" is ``LambdaLR(opt, lambda t: 1.0)``.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import autostep


def linear(opt, total, warmup=0):
    def f(t):  # transformers.get_linear_schedule_with_warmup, written out (no import needed)
        if t < warmup:
            return t / max(1, warmup)
        return max(0.0, (total - t) / max(1, total - warmup))
    return torch.optim.lr_scheduler.LambdaLR(opt, f)


SCHEDULES = {
    "none": None,
    "constant LambdaLR": lambda opt, T: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0),
    "HF linear": lambda opt, T: linear(opt, T),
    "HF linear+warmup": lambda opt, T: linear(opt, T, warmup=T // 10),
    "cosine": lambda opt, T: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T),
    "ExponentialLR 0.99": lambda opt, T: torch.optim.lr_scheduler.ExponentialLR(opt, 0.99),
}


def run(method: str, sched: str, steps: int):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 784, generator=g)
    y = (x @ torch.randn(784, 10, generator=g)).argmax(1)
    model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = autostep.create(method, model.parameters())
    sch = SCHEDULES[sched](opt, steps) if SCHEDULES[sched] else None
    lrs, loss = [], math.nan
    for t in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        xb, yb = x[idx], y[idx]
        loss = float(opt.step(lambda: nn.functional.cross_entropy(model(xb), yb)))
        lrs.append(opt.param_groups[0]["lr"])
        if sch is not None:
            sch.step()
    tail = lrs[-max(1, steps // 10):]
    return opt.forwards / steps, sum(tail) / len(tail), loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--methods", default="SALSA,SLS")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'method':<16}{'scheduler':<22}{'fwd/step':>9}{'late lr':>11}{'loss':>8}")
    for m in args.methods.split(","):
        for s in SCHEDULES:
            f, lr, loss = run(m, s, args.steps)
            print(f"{m:<16}{s:<22}{f:>9.2f}{lr:>11.3g}{loss:>8.3f}")


if __name__ == "__main__":
    main()
