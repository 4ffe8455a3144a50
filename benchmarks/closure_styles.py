"""Cost of the two closure conventions: loss-only, torch-style, and torch-style with grad mode
forced on (Lightning's closure is decorated with ``torch.enable_grad()``, so its trial forwards
record a graph that is never back-propagated).

    PYTHONPATH=src python benchmarks/closure_styles.py [--steps 60] [--method SALSA]

Prints seconds per step, forwards and backwards per step for each convention.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import autostep


def run(style: str, method: str, steps: int, width: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 10))
    opt = autostep.create(method, model.parameters())
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(128, 256, generator=g) for _ in range(8)]
    ys = [torch.randint(0, 10, (128,), generator=g) for _ in range(8)]

    def make(x, y):
        if style == "loss-only":
            return lambda: nn.functional.cross_entropy(model(x), y)

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss
        return torch.enable_grad()(closure) if style == "torch-style+enable_grad" else closure

    for i in range(5):  # warm-up
        opt.step(make(xs[i % 8], ys[i % 8]))
    f0, b0 = opt.forwards, opt.backwards
    t = time.perf_counter()
    for i in range(steps):
        opt.step(make(xs[i % 8], ys[i % 8]))
    dt = (time.perf_counter() - t) / steps
    return dt, (opt.forwards - f0) / steps, (opt.backwards - b0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--method", default="SALSA")
    ap.add_argument("--width", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{args.method}, MLP 256-{args.width}-{args.width}-10, batch 128, {args.steps} steps")
    print(f"{'closure':<26}{'ms/step':>9}{'fwd/step':>10}{'bwd/step':>10}")
    for style in ("loss-only", "torch-style", "torch-style+enable_grad"):
        dt, f, b = run(style, args.method, args.steps, args.width)
        print(f"{style:<26}{dt * 1e3:>9.2f}{f:>10.2f}{b:>10.2f}")


if __name__ == "__main__":
    main()
