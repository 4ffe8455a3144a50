"""PAL and LABPAL (both modes) against Adam and SGD on the digits MLP and the Fashion-MNIST MLP.

Every method trains the same seeded model on the same seeded batches for the same number of
batches (digits MLP 64-64-10: 1500 batches of 64; Fashion-MNIST MLP 784-256-128-10: 2000 batches of
128, when Debian's dataset-fashion-mnist is installed), at seeds 0, 1, 2.  LABPAL gets
``total_steps`` = the run length (its batch-size schedule) and otherwise the paper's defaults.
Printed per problem and method (median over seeds, and the per-seed values): final training loss
(whole training set, eval mode), test accuracy, forwards per batch, CPU seconds per run.  Runs go
to a process pool of at most 2 workers, one torch thread each.

Run:  python benchmarks/parabolic_compare.py [--seeds 0 1 2] [--problems digits fmnist]
      [--steps-digits 1500] [--steps-fmnist 2000] [--workers 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch

METHODS = ("SGD 0.1", "Adam 1e-3", "PAL", "LABPAL sgd", "LABPAL nsgd", "LABPAL nsgd mom 0.5")


def build(method: str, params, total: int):
    from autostep.optim.labpal import LABPAL
    from autostep.optim.pal import PAL

    if method == "SGD 0.1":
        return torch.optim.SGD(params, lr=0.1)
    if method == "Adam 1e-3":
        return torch.optim.Adam(params, lr=1e-3)
    if method == "PAL":
        return PAL(params)
    if method == "LABPAL sgd":
        return LABPAL(params, mode="sgd", total_steps=total)
    if method == "LABPAL nsgd":
        return LABPAL(params, mode="nsgd", total_steps=total)
    if method == "LABPAL nsgd mom 0.5":
        return LABPAL(params, mode="nsgd", total_steps=total, momentum=0.5)
    raise ValueError(method)


def run_one(job: tuple) -> dict:
    problem, method, seed, steps = job
    torch.set_num_threads(1)
    from autostep._closure import NonFiniteLossError
    from autostep.bench.tasks import digits_mlp, fmnist_mlp

    pb = digits_mlp(seed) if problem == "digits" else fmnist_mlp(seed)
    model = pb.model
    opt = build(method, model.parameters(), steps)
    closure_based = hasattr(opt, "last_step")
    diverged = False
    t0 = time.process_time()
    for xb, yb in pb.batches(steps, seed=seed):
        if closure_based:
            try:
                opt.step(lambda: pb.loss_fn(model, (xb, yb)))
            except NonFiniteLossError:
                diverged = True
                break
        else:
            opt.zero_grad()
            loss = pb.loss_fn(model, (xb, yb))
            loss.backward()
            opt.step()
    cpu = time.process_time() - t0
    train = pb.evaluate("train")
    test = pb.evaluate("test")
    fwd = getattr(opt, "forwards", steps) / steps
    extra = {}
    if hasattr(opt, "estimates"):
        extra = {"estimates": opt.estimates, "failed_fits": opt.failed_fits,
                 "lr": opt.param_groups[0]["lr"]}
    return {"problem": problem, "method": method, "seed": seed, "train_loss": train.loss,
            "test_acc": test.metric, "fwd": fwd, "cpu": cpu, "diverged": diverged, **extra}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--problems", nargs="+", default=["digits", "fmnist"])
    ap.add_argument("--steps-digits", type=int, default=1500)
    ap.add_argument("--steps-fmnist", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    problems = list(args.problems)
    if "fmnist" in problems:
        from autostep.bench.tasks import load_fashion_mnist

        if load_fashion_mnist() is None:
            print("Fashion-MNIST not installed (/usr/share/datasets/fashion-mnist): skipped")
            problems.remove("fmnist")
    steps = {"digits": args.steps_digits, "fmnist": args.steps_fmnist}
    jobs = [(p, m, s, steps[p]) for p in problems for s in args.seeds for m in METHODS]
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=max(1, min(2, args.workers))) as pool:
        results = list(pool.map(run_one, jobs))
    print(f"{len(jobs)} runs in {time.time() - t0:.0f} s wall, seeds {args.seeds}")
    for p in problems:
        print(f"\n{p}: {steps[p]} batches; median over seeds (per-seed values in brackets)")
        print(f"{'method':22s} {'train loss':>10s} {'test acc':>9s} {'fwd/batch':>9s} "
              f"{'cpu s':>6s}  per-seed train loss / test acc")
        for m in METHODS:
            rs = [r for r in results if r["problem"] == p and r["method"] == m]
            tl = statistics.median(r["train_loss"] for r in rs)
            ta = statistics.median(r["test_acc"] for r in rs)
            fw = statistics.median(r["fwd"] for r in rs)
            cpu = statistics.median(r["cpu"] for r in rs)
            per = " ".join(f"{r['train_loss']:.4f}/{r['test_acc']:.3f}" for r in rs)
            flag = " DIVERGED" if any(r["diverged"] for r in rs) else ""
            print(f"{m:22s} {tl:10.4f} {ta:9.3f} {fw:9.3f} {cpu:6.1f}  {per}{flag}")
        lab = [r for r in results if r["problem"] == p and "estimates" in r]
        if lab:
            print("  LABPAL fits (estimates/failed, final lr): " + "; ".join(
                f"{r['method'].split()[1] if len(r['method'].split()) > 1 else r['method']}"
                f"{' mom' if 'mom' in r['method'] else ''} s{r['seed']}: "
                f"{r['estimates']}/{r['failed_fits']}, {r['lr']:.3g}" for r in lab))


if __name__ == "__main__":
    main()
