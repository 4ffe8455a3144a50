"""CPU time of single steps by kind (reused, searched, other) against Adam and SGD, interleaved.

Every method trains its own copy of the model on the same batches; each step of each method is
timed on its own (``time.process_time``), the methods interleaved step by step, one torch thread.
Printed per method and kind of step (``last_step["reused"]`` / ``["searched"]``): the count and
the median time per step, as a ratio to the median Adam and SGD step, and the mean over all steps.
This separates what an amortised run's average mixes: reused steps and searches.

Run:  python benchmarks/step_kinds.py [--problem fmnist] [--steps 1200] [--methods "SALSA amortize=1000" ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import autostep
from autostep.bench.tasks import digits_mlp, fmnist_mlp, load_fashion_mnist

METHODS = {
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "SGD": lambda p: torch.optim.SGD(p, lr=0.1),
    "Adam-fused": lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
    "SALSA": lambda p: autostep.SALSA(p),
    "SALSA amortize=10": lambda p: autostep.SALSA(p, amortize=10),
    "SALSA amortize=1000": lambda p: autostep.SALSA(p, amortize=1000),
    "ALSALS amortize=1000": lambda p: autostep.ALSALS(p, amortize=1000),
    "LABPAL nsgd": lambda p: autostep.LABPAL(p, mode="nsgd"),
    "PAL": lambda p: autostep.PAL(p),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=["digits", "fmnist"], default="fmnist")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--skip", type=int, default=200, help="first steps not counted (warm-up)")
    ap.add_argument("--methods", nargs="+", default=["SALSA amortize=1000", "SALSA amortize=10"],
                    choices=list(METHODS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.problem == "fmnist" and load_fashion_mnist() is None:
        print("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
        return 1
    factory = fmnist_mlp if args.problem == "fmnist" else digits_mlp
    names = ["Adam", "SGD"] + [m for m in args.methods if m not in ("Adam", "SGD")]
    setups = {}
    for name in names:
        prob = factory(seed=0)
        setups[name] = (prob, prob.model, METHODS[name](prob.model.parameters()),
                        prob.batch_list(args.steps, seed=0))
    times = {n: [] for n in names}
    kinds = {n: [] for n in names}
    for i in range(args.steps):
        for name in names:
            prob, model, opt, batches = setups[name]
            xb, yb = batches[i]
            t0 = time.process_time()
            if isinstance(opt, torch.optim.Adam | torch.optim.SGD):
                opt.zero_grad(set_to_none=True)
                prob.loss_fn(model, (xb, yb)).backward()
                opt.step()
            else:
                opt.step(lambda: prob.loss_fn(model, (xb, yb)))
            dt = time.process_time() - t0
            if i >= args.skip:
                info = getattr(opt, "last_step", None) or {}
                times[name].append(dt)
                kinds[name].append("reused" if info.get("reused") else
                                   "searched" if info.get("searched") else "other")
    adam, sgd = statistics.median(times["Adam"]), statistics.median(times["SGD"])
    print(f"{args.problem}, steps {args.skip}-{args.steps}: Adam {adam * 1e3:.3f} ms, SGD {sgd * 1e3:.3f} ms (medians)\n")
    print("| method | steps | n | median ms | / Adam | / SGD |")
    print("|---|---|---|---|---|---|")
    for name in names[2:]:
        for kind in ("reused", "searched", "other"):
            ts = [t for t, k in zip(times[name], kinds[name]) if k == kind]
            if ts:
                m = statistics.median(ts)
                print(f"| {name} | {kind} | {len(ts)} | {m * 1e3:.3f} | {m / adam:.3f} | {m / sgd:.3f} |")
        mean = statistics.mean(times[name])
        print(f"| {name} | all (mean / mean) | {len(times[name])} | {mean * 1e3:.3f} | "
              f"{mean / statistics.mean(times['Adam']):.3f} | {mean / statistics.mean(times['SGD']):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
