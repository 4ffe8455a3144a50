"""The idea of the AutoLR paper's Table 2 at small scale: does an explore phase help test accuracy?

SGD seeded at lr 0.1 (the paper's seed for SGD) on the digits MLP and, when the data is installed, the
Fashion-MNIST MLP; AutoLR with explore phases of 0 %, 10 % and 25 % of the run, plus the constant-rate
baseline for reference; 3 seeds (model init and data order).  AutoLR uses the paper's MNIST /
Fashion-MNIST settings (Table 7) scaled to the run length: ``recompute_every = T / 100`` (twice an
epoch for 50 epochs), ``superbatch = recompute_every / 10`` (100 batches per 1000 steps), 5 samples,
r = 1e-3, saturation threshold 100, rollback on.  Probe batches come from the training split.

Runs go to a process pool of at most 2 workers, each with one torch thread.  Prints a table (mean and
standard deviation over seeds) and, with ``--json``, writes every run's numbers and AutoLR decision
history.

    python benchmarks/autolr_table2.py                       # default, ~5-10 min on 2 cores
    python benchmarks/autolr_table2.py --problems digits --seeds 0 1 2 --json autolr_table2.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

STEPS = {"digits": 4000, "fmnist": 6000}
EXPLORE = [None, 0.0, 0.10, 0.25]   # None: constant lr 0.1 baseline


def _init_worker() -> None:
    import torch
    torch.set_num_threads(1)


def run_one(problem: str, explore, seed: int, steps: int, windows: int = 100) -> dict:
    """Train one configuration; returns metrics and the decision history."""
    import torch
    from autostep.autolr import AutoLR
    from autostep.bench.tasks import digits_mlp, fmnist_mlp

    p = digits_mlp(seed) if problem == "digits" else fmnist_mlp(seed)
    opt = torch.optim.SGD(p.model.parameters(), lr=0.1)
    stepper, wrapper = opt, None
    if explore is not None:
        every = max(steps // windows, 10)
        wrapper = AutoLR(opt, p.model, p.loss_fn, p.batch_list(300, seed=seed + 1000),
                         total_steps=steps, explore_steps=float(explore), recompute_every=every,
                         superbatch=max(every // 10, 1), num_samples=5, eps_threshold=1e-3,
                         saturation_threshold=100.0, seed=seed)
        stepper = wrapper
    t0 = time.process_time()
    for b in p.batches(steps, seed=seed + 1):
        loss = p.loss_fn(p.model, b)
        loss.backward()
        stepper.step()
        stepper.zero_grad()
    cpu = time.process_time() - t0
    out = {"problem": problem, "explore": explore, "seed": seed, "steps": steps, "cpu_s": cpu,
           "train_loss": p.evaluate("train").loss, "test_acc": p.evaluate("test").metric,
           "final_lr": opt.param_groups[0]["lr"]}
    if wrapper is not None:
        out.update(recomputes=wrapper.recomputes, rollbacks=wrapper.rollbacks,
                   max_lr=max([0.1] + [h["new_lr"] for h in wrapper.history]),
                   history=[{k: v for k, v in h.items() if k not in ("offsets", "losses")}
                            for h in wrapper.history])
    return out


def _fmt(xs, spec=".4f") -> str:
    m = statistics.mean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:{spec}} ± {s:{spec}}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", default=["digits", "fmnist"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="override the run length of every problem")
    ap.add_argument("--windows", type=int, default=100,
                    help="recompute windows per run (recompute_every = T / windows; paper: 100)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None, help="write all runs (with AutoLR histories) here")
    args = ap.parse_args(argv)
    if not 1 <= args.workers <= 2:
        ap.error("--workers must be 1 or 2")
    from autostep.bench.tasks import load_fashion_mnist
    problems = []
    for name in args.problems:
        if name == "fmnist" and load_fashion_mnist() is None:
            print("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): skipped")
            continue
        problems.append(name)
    jobs = [(prob, ex, seed, args.steps or STEPS[prob], args.windows)
            for prob in problems for ex in EXPLORE for seed in args.seeds]
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker) as pool:
        results = list(pool.map(run_one, *zip(*jobs)))
    wall = time.time() - t0

    print(f"SGD seeded at lr 0.1, seeds {args.seeds}, mean ± std, recompute_every = T/{args.windows}, "
          f"superbatch = recompute_every/10; wall {wall:.0f} s with {args.workers} workers x 1 thread")
    head = (f"{'problem':7} {'T':>5} {'schedule':18} {'test acc':>17} {'train loss':>17} "
            f"{'final lr':>9} {'max lr':>7} {'recomp':>6} {'rollb':>5} {'x const CPU':>11}")
    print(head)
    print("-" * len(head))
    for prob in problems:
        base_cpu = None
        for ex in EXPLORE:
            rs = [r for r in results if r["problem"] == prob and r["explore"] == ex]
            name = "constant 0.1" if ex is None else f"AutoLR explore {ex:.0%}"
            cpu = statistics.mean(r["cpu_s"] for r in rs)
            base_cpu = cpu if ex is None else base_cpu
            lr = statistics.median(r["final_lr"] for r in rs)
            mx = "-" if ex is None else f"{statistics.median(r['max_lr'] for r in rs):.3g}"
            rc = "-" if ex is None else f"{statistics.mean(r['recomputes'] for r in rs):.0f}"
            rb = "-" if ex is None else f"{statistics.mean(r['rollbacks'] for r in rs):.1f}"
            print(f"{prob:7} {rs[0]['steps']:5d} {name:18} {_fmt([r['test_acc'] for r in rs]):>17} "
                  f"{_fmt([r['train_loss'] for r in rs]):>17} {lr:9.3g} {mx:>7} {rc:>6} {rb:>5} "
                  f"{cpu / base_cpu:11.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
