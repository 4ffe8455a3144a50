"""What the amortised mode costs in loss: SALSA / smoothed ALSALS with and without ``amortize=10``.

Each method trains the same model on the same batches for each seed (paired); printed are medians
over seeds of the final full-train loss, test accuracy, forwards per step and CPU seconds, plus the
ratio amortised / plain of the train loss per seed.

Run:  python benchmarks/amortize.py [--problem fmnist] [--steps 2000] [--seeds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

import autostep
from autostep.bench.tasks import digits_mlp, fmnist_mlp, load_fashion_mnist

PAIRS = {
    "SALSA": (lambda p: autostep.SALSA(p), lambda p: autostep.SALSA(p, amortize=10)),
    "ALSALS smooth=0.9": (lambda p: autostep.ALSALS(p, smooth=0.9),
                          lambda p: autostep.ALSALS(p, smooth=0.9, amortize=10)),
}


def run(job):
    problem, pair, amortized, seed, steps = job
    torch.set_num_threads(1)
    prob = digits_mlp(seed=seed) if problem == "digits" else fmnist_mlp(seed=seed)
    model = prob.model
    opt = PAIRS[pair][int(amortized)](model.parameters())
    t0 = time.process_time()
    for xb, yb in prob.batches(steps, seed=seed):
        opt.step(lambda: prob.loss_fn(model, (xb, yb)))
    cpu = time.process_time() - t0
    return {"pair": pair, "amortized": amortized, "seed": seed, "cpu": cpu,
            "train": prob.evaluate("train").loss, "test_acc": prob.evaluate("test").metric,
            "fwd": opt.forwards / steps}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=["digits", "fmnist"], default="fmnist")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if args.problem == "fmnist" and load_fashion_mnist() is None:
        print("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
        return 1
    jobs = [(args.problem, pair, am, s, args.steps) for pair in PAIRS for am in (False, True)
            for s in range(args.seeds)]
    with ProcessPoolExecutor(args.workers) as ex:
        res = list(ex.map(run, jobs))
    print(f"{args.problem}, {args.steps} steps, {args.seeds} seeds (medians)")
    print("| method | amortize | train loss | test acc | forwards/step | CPU s | train loss amortised/plain |")
    print("|---|---|---|---|---|---|---|")
    for pair in PAIRS:
        plain = {r["seed"]: r for r in res if r["pair"] == pair and not r["amortized"]}
        for am in (False, True):
            rs = [r for r in res if r["pair"] == pair and r["amortized"] == am]
            ratio = statistics.median(r["train"] / plain[r["seed"]]["train"] for r in rs)
            med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
            print(f"| {pair} | {'10' if am else 'off'} | {med('train'):.4f} | {med('test_acc'):.4f} | "
                  f"{med('fwd'):.2f} | {med('cpu'):.1f} | {ratio:.3f} |")
    print("\nper seed, train loss amortised / plain:")
    for pair in PAIRS:
        plain = {r["seed"]: r for r in res if r["pair"] == pair and not r["amortized"]}
        rs = sorted((r for r in res if r["pair"] == pair and r["amortized"]), key=lambda r: r["seed"])
        print(f"  {pair}: " + ", ".join(f"{r['train'] / plain[r['seed']]['train']:.3f}" for r in rs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
