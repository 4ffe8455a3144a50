"""How good is the ALSALS paper's finite-difference estimate of f_a (eq. 6)?

f_a is the first-order loss decrease per unit step along the Adam direction d (momentum included).
The paper estimates it as (f(w) - f(w - eps*d)) / eps with eps = 5e-8; autostep uses the exact
directional derivative <g, d> from the gradient it already has.  This script trains a model with Adam
and, at regular steps, compares on the current mini-batch:

* exact:  <g, d> (float64 accumulation of float32 tensors)
* FD32:   the paper's finite difference, evaluated in float32 (how a float32 model computes it)
* FD64:   the same finite difference with the model and data in float64 (a reference that is
          accurate to ~1e-7 relative, showing the formula itself is fine when precision allows)

and prints the median relative error of FD32 and FD64 against the exact value, and how often FD32
comes out exactly 0 (the loss difference vanished in rounding).

Run:  python benchmarks/fa_estimate.py [--problem digits|fmnist] [--steps 300]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch

from autostep.bench.tasks import digits_mlp, fmnist_mlp


def adam_direction(opt: torch.optim.Adam, params):
    """Adam's next update direction per unit lr (momentum and bias corrections included)."""
    b1, b2 = opt.param_groups[0]["betas"]
    eps = opt.param_groups[0]["eps"]
    out = []
    for p in params:
        st = opt.state[p]
        k = int(st["step"]) + 1
        m = b1 * st["exp_avg"] + (1 - b1) * p.grad
        v = b2 * st["exp_avg_sq"] + (1 - b2) * p.grad * p.grad
        out.append((m / (1 - b1 ** k)) / ((v / (1 - b2 ** k)).sqrt() + eps))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=["digits", "fmnist"], default="digits")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--eps", type=float, default=5e-8)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prob = digits_mlp(seed=0) if args.problem == "digits" else fmnist_mlp(seed=0)
    if prob is None:
        print("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
        return 1
    model = prob.model
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    err32, err64, zeros, n = [], [], 0, 0
    for k, (xb, yb) in enumerate(prob.batches(args.steps, seed=0), start=1):
        opt.zero_grad()
        loss = prob.loss_fn(model, (xb, yb))
        loss.backward()
        if k > 1 and k % args.every == 0:
            d = adam_direction(opt, params)
            exact = float(sum((g.double() * di.double()).sum() for g, di in zip((p.grad for p in params), d)))
            with torch.no_grad():
                f0 = prob.loss_fn(model, (xb, yb)).item()
                moved = copy.deepcopy(model)
                for p, di in zip(moved.parameters(), d):
                    p.sub_(args.eps * di)
                f1 = prob.loss_fn(moved, (xb, yb)).item()
                m64 = copy.deepcopy(model).double()
                x64 = xb.double()
                g0 = prob.loss_fn(m64, (x64, yb)).item()
                for p, di in zip(m64.parameters(), d):
                    p.sub_(args.eps * di.double())
                g1 = prob.loss_fn(m64, (x64, yb)).item()
            fd32 = (f0 - f1) / args.eps
            fd64 = (g0 - g1) / args.eps
            err32.append(abs(fd32 - exact) / abs(exact))
            err64.append(abs(fd64 - exact) / abs(exact))
            zeros += fd32 == 0.0
            n += 1
        opt.step()
    print(f"{args.problem}: {n} measurements, eps = {args.eps:g}")
    print("| estimate | median relative error vs <g, d> | 90th percentile | exactly zero |")
    print("|---|---|---|---|")
    q = lambda xs, f: sorted(xs)[min(len(xs) - 1, int(f * len(xs)))]  # noqa: E731
    print(f"| finite difference, float32 | {statistics.median(err32):.3g} | {q(err32, 0.9):.3g} | {zeros}/{n} |")
    print(f"| finite difference, float64 | {statistics.median(err64):.3g} | {q(err64, 0.9):.3g} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
