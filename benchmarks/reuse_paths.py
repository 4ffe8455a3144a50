"""Do the fused and the foreach reused steps train alike?  Two runs of one amortised optimizer on
the same seed, batches and model, one with reused steps in torch's fused Adam kernel (the default
where it exists), one with the foreach path (``autostep.optim._adam._FUSED_DEVICES = ()``).

Printed: the first step where their decisions (reused or searched, trials) or step sizes (relative
difference > 1e-6) differ, the searches of each, their final full-train losses and median step
size over the last 500 steps.  Identical decisions up to a step, then a parting of the runs, is
what rounding differences do to a chaotic run; a difference from the first steps would be a
different update.

Run:  python benchmarks/reuse_paths.py [--method ALSALS] [--seeds 1 4] [--steps 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import autostep
from autostep.bench.tasks import fmnist_mlp, load_fashion_mnist
from autostep.optim import _adam

METHODS = {
    "SALSA": lambda p: autostep.SALSA(p, amortize=10),
    "ALSALS": lambda p: autostep.ALSALS(p, smooth=0.9, amortize=10),
}


def run(method: str, seed: int, steps: int, fused: bool):
    saved = _adam._FUSED_DEVICES
    _adam._FUSED_DEVICES = saved if fused else ()
    try:
        prob = fmnist_mlp(seed=seed)
        model = prob.model
        opt = METHODS[method](model.parameters())
        decisions, lrs = [], []
        for xb, yb in prob.batches(steps, seed=seed):
            opt.step(lambda: prob.loss_fn(model, (xb, yb)))
            decisions.append((bool(opt.last_step.get("reused")), opt.last_step.get("trials")))
            lrs.append(opt.param_groups[0]["lr"])
        return decisions, lrs, prob.evaluate("train").loss
    finally:
        _adam._FUSED_DEVICES = saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=list(METHODS), default="ALSALS")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if load_fashion_mnist() is None:
        print("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
        return 1
    if not _adam._FUSED_DEVICES:
        print("this torch has no fused Adam kernel: both runs would take the foreach path")
        return 1
    print("| method | seed | same decisions until | same step sizes until | searches fused / foreach | "
          "train loss fused / foreach | median lr last 500 fused / foreach |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        (da, la, fa), (db, lb, fb) = (run(args.method, seed, args.steps, f) for f in (True, False))
        first = next((i for i, (x, y) in enumerate(zip(da, db)) if x != y), None)
        first_lr = next((i for i, (x, y) in enumerate(zip(la, lb)) if abs(x - y) > 1e-6 * abs(y)), None)
        print(f"| {args.method} | {seed} | {first if first is not None else 'the end'} | "
              f"{first_lr if first_lr is not None else 'the end'} | "
              f"{sum(not r for r, _ in da)} / {sum(not r for r, _ in db)} | {fa:.4f} / {fb:.4f} | "
              f"{statistics.median(la[-500:]):.4g} / {statistics.median(lb[-500:]):.4g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
