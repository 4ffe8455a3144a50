"""CPU-time overhead of AutoLR: a run wrapped in AutoLR / the same run at a fixed rate.

Both runs train the same model on the same mini-batches with the same wrapped optimizer; the only
difference is AutoLR's work (drop-rate checks, probes, snapshots).  Measured in one process with
``torch.set_num_threads(1)`` and ``time.process_time()``, repeats interleaved (fixed, AutoLR, fixed,
AutoLR, ...) so drifts in machine load hit both; the table reports the median ratio over repeats.

The paper's settings are scaled to the run length ``T`` (MNIST / Fashion-MNIST rows of Table 7 and
Appendix C): explore 20 % of the run (10 of 50 epochs), ``recompute_every = T / 100`` (twice an epoch
for 50 epochs), ``superbatch = recompute_every / 10`` (the paper's 100 batches per 1000 steps),
5 samples, r = 1e-3, saturation threshold 100, rollback on, snapshots in memory.  The paper bounds the
overhead at 16.6 %; the target here is a ratio <= 1.15.

    python benchmarks/overhead_autolr.py                 # digits + Fashion-MNIST if installed
    python benchmarks/overhead_autolr.py --steps 2000 --repeats 5 --problems digits
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from autostep.autolr import AutoLR
from autostep.bench.tasks import digits_mlp, fmnist_mlp, load_fashion_mnist

OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
}


def paper_settings(steps: int, windows: int = 100) -> dict:
    """The paper's defaults scaled to a run of ``steps`` steps (see module docstring)."""
    every = max(steps // windows, 10)
    return dict(total_steps=steps, explore_steps=0.2, recompute_every=every,
                superbatch=max(every // 10, 1), num_samples=5, eps_threshold=1e-3,
                saturation_threshold=100.0)


def make_problem(name: str, seed: int):
    if name == "digits":
        return digits_mlp(seed)
    return fmnist_mlp(seed)


def run(problem_name: str, opt_name: str, steps: int, autolr: bool, seed: int = 0,
        windows: int = 100):
    """Train once; returns (cpu seconds, AutoLR or None)."""
    p = make_problem(problem_name, seed)
    opt = OPTIMIZERS[opt_name](p.model.parameters())
    probe = p.batch_list(200, seed=seed + 1000)
    batches = p.batch_list(steps, seed=seed + 1) if problem_name == "digits" else None
    it = batches if batches is not None else p.batches(steps, seed=seed + 1)
    wrapper = AutoLR(opt, p.model, p.loss_fn, probe, **paper_settings(steps, windows)) if autolr else None
    stepper = wrapper or opt
    t0 = time.process_time()
    for b in it:
        loss = p.loss_fn(p.model, b)
        loss.backward()
        stepper.step()
        stepper.zero_grad()
    return time.process_time() - t0, wrapper


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--problems", nargs="+", default=["digits", "fmnist"])
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    ap.add_argument("--windows", type=int, default=100,
                    help="recompute windows per run: recompute_every = T / windows (paper: 100; "
                         "AutoLR's default for short runs: 25)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    problems = [n for n in args.problems if n == "digits" or load_fashion_mnist() is not None]
    cfg = paper_settings(args.steps, args.windows)
    print(f"torch {torch.__version__}, 1 thread, T={args.steps}, repeats={args.repeats}, "
          f"recompute_every={cfg['recompute_every']}, superbatch={cfg['superbatch']}, "
          f"explore={cfg['explore_steps']:.0%}")
    rows = []
    for prob in problems:
        for opt_name in args.optimizers:
            run(prob, opt_name, 50, False)      # warm-up (allocator, kernels)
            base, auto, info = [], [], None
            for _ in range(args.repeats):
                base.append(run(prob, opt_name, args.steps, False)[0])
                t, w = run(prob, opt_name, args.steps, True, windows=args.windows)
                auto.append(t)
                info = w
            ratios = [a / b for a, b in zip(auto, base)]
            rows.append((prob, opt_name, statistics.median(base), statistics.median(auto),
                         statistics.median(ratios), min(ratios), max(ratios), info))
    head = (f"{'problem':8} {'optimizer':9} {'fixed s':>8} {'AutoLR s':>9} {'ratio':>6} "
            f"{'(min-max)':>12} {'recomp':>6} {'rollb':>5} {'probe fwd/step':>14} {'final lr':>9}")
    print(head)
    print("-" * len(head))
    for prob, opt_name, b, a, r, lo, hi, w in rows:
        print(f"{prob:8} {opt_name:9} {b:8.2f} {a:9.2f} {r:6.3f} {f'{lo:.3f}-{hi:.3f}':>12} "
              f"{w.recomputes:6d} {w.rollbacks:5d} {w.probe_forwards / args.steps:14.3f} "
              f"{w.lr:9.3g}")
    allr = [row[4] for row in rows]
    print(f"median ratio over rows: {statistics.median(allr):.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
