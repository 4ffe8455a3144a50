"""``autostep demo``: train a small real-data model with every Armijo optimizer and with Adam.

Prints, for each method, the mini-batch loss and the step size along training, then a summary
table: final loss on the full training set, test accuracy, the slides' mean log loss
``sum_t log(l_t) / T`` of the mini-batch losses, forwards per step and CPU seconds.

    autostep demo                       # digits MLP, 600 steps, seed 0
    autostep demo --problem fmnist      # Fashion-MNIST MLP (needs dataset-fashion-mnist)
    autostep demo --seeds 3 --steps 1000
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable

import torch

from .metrics import mean_log_loss
from .optim import ALSALS, PLASLS, SALSA, SLS, AdamSLS
from .bench.tasks import DataMissing, demo_task

__all__ = ["METHODS", "train_one", "run_demo", "register"]

#: name -> factory(params); torch.optim.Adam at 1e-3 is the one-shot baseline users start from
METHODS: dict[str, Callable] = {
    "Adam 1e-3": lambda p: torch.optim.Adam(p, lr=1e-3),
    "SLS": lambda p: SLS(p),
    "AdamSLS": lambda p: AdamSLS(p),
    "SALSA": lambda p: SALSA(p),
    "SALSA amortize=10": lambda p: SALSA(p, amortize=10),
    "ALSALS": lambda p: ALSALS(p),
    "PLASLS": lambda p: PLASLS(p),
}


def _problem(name: str, seed: int, data_dir=None):
    try:
        return demo_task(name, seed, data_dir)
    except DataMissing:
        raise SystemExit(
            "Fashion-MNIST is not installed: run `apt-get install dataset-fashion-mnist` or pass "
            "--data-dir with the four IDX files."
        ) from None


def train_one(method: str, problem: str = "digits", steps: int = 600, seed: int = 0,
              log_every: int = 100, data_dir=None) -> dict:
    """Train one method; returns its curve (loss, step size) and final metrics."""
    prob = _problem(problem, seed, data_dir)
    model = prob.model
    opt = METHODS[method](model.parameters())
    closure_based = not isinstance(opt, torch.optim.Adam)
    losses, curve = [], []
    t0 = time.process_time()
    for k, (xb, yb) in enumerate(prob.batches(steps, seed=seed), start=1):
        if closure_based:
            loss = opt.step(lambda: prob.loss_fn(model, (xb, yb)))
        else:
            opt.zero_grad(set_to_none=True)
            loss = prob.loss_fn(model, (xb, yb))
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))
        if k % log_every == 0 or k == steps:
            window = losses[-log_every:]
            curve.append((k, sum(window) / len(window), opt.param_groups[0]["lr"]))
    cpu = time.process_time() - t0
    train_loss, _ = prob.evaluate("train")
    _, test_acc = prob.evaluate("test")
    finite = [x for x in losses if math.isfinite(x) and x > 0]
    return {
        "method": method,
        "seed": seed,
        "curve": curve,
        "train_loss": train_loss,
        "test_acc": test_acc,
        "mean_log_loss": mean_log_loss(finite) if finite else math.nan,
        "forwards_per_step": getattr(opt, "forwards", steps) / steps,
        "cpu_s": cpu,
        "final_lr": opt.param_groups[0]["lr"],
    }


def run_demo(problem: str = "digits", steps: int = 600, seeds=(0,), methods=None,
             log_every: int = 100, data_dir=None, out=print) -> list[dict]:
    """Run every method on every seed and print curves and the summary table; returns the runs."""
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    torch.set_num_threads(1)
    runs = []
    out(f"autostep demo: {problem}, {steps} steps, seeds {list(seeds)}, one torch thread\n")
    for m in methods:
        for s in seeds:
            r = train_one(m, problem, steps, s, log_every, data_dir)
            runs.append(r)
            if s == seeds[0]:
                pts = "  ".join(f"{k}: loss {l:.3f} lr {lr:.2g}" for k, l, lr in r["curve"])
                out(f"{m:<18} {pts}")
    out("")
    out("| method | train loss | test acc | mean log loss | forwards/step | CPU s | final step size |")
    out("|---|---|---|---|---|---|---|")
    for m in methods:
        rs = [r for r in runs if r["method"] == m]

        def med(key):
            return statistics.median(r[key] for r in rs)

        out(f"| {m} | {med('train_loss'):.4f} | {med('test_acc'):.4f} | {med('mean_log_loss'):.3f} | "
            f"{med('forwards_per_step'):.2f} | {med('cpu_s'):.1f} | {med('final_lr'):.3g} |")
    if len(seeds) > 1:
        out(f"\n(medians over {len(seeds)} seeds)")
    return runs


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train a small model with every Armijo optimizer vs Adam",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problem", choices=["digits", "fmnist"], default="digits")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0, 1, ...)")
    p.add_argument("--methods", nargs="+", default=None, help=f"subset of: {', '.join(METHODS)}")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--data-dir", default=None, help="folder with Fashion-MNIST IDX files")

    def run(args):
        if args.steps < 1 or args.seeds < 1 or args.log_every < 1:
            raise SystemExit("--steps, --seeds and --log-every must be positive")
        run_demo(args.problem, args.steps, tuple(range(args.seeds)), args.methods, args.log_every,
                 args.data_dir)
        return 0

    p.set_defaults(func=run)
