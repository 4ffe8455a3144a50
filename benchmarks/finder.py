"""Benchmark of the LR search (autostep.find_lr) against the range-test rules and a grid search.

For each problem (digits MLP; Fashion-MNIST MLP when its IDX files are installed), each optimizer
(Adam; SGD with momentum 0.9) and each seed, the learning rate chosen by

  (a) the step-sampling search (its three picks; ``log_midpoint`` is the recommended one),
  (b) the range-test rules (fastai valley / steep / min_div_10 / slide, Surmenok steepest, and the
      Wittmann reset-per-rate lowest loss),
  (c) every rate of a 7-point half-decade grid,

is used to train the model from the same initialisation on the same batches for the same budget
(constant rate); we report the final validation loss and test accuracy (means over seeds) and the
training steps each selector spent per seed.  The target of issue 5: the search's pick reaches a
validation loss within 1.05x of the best grid rate's, spending <= 10 % of the grid's training steps.

    python benchmarks/finder.py            # digits + fmnist (if present), 3 seeds
    python benchmarks/finder.py --quick    # digits only, shorter budget, 2 seeds

Each process uses one torch thread; at most 2 processes run at once.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

import autostep.finder as F
from autostep.bench.tasks import digits_mlp, fmnist_mlp, load_fashion_mnist

GRIDS = {  # 7-point half-decade grids, centred on each optimizer's usual range
    "adam": [10 ** (-4 + 0.5 * i) for i in range(7)],   # 1e-4 .. 1e-1
    "sgd": [10 ** (-3 + 0.5 * i) for i in range(7)],    # 1e-3 .. 1
}
SEARCH_PICKS = ("log_midpoint", "half_drop", "steepest")
RAMP_PICKS = ("valley", "steep", "min_div_10", "slide", "steepest")


def make_opt(name):
    if name == "adam":
        return lambda params, lr: torch.optim.Adam(params, lr=lr)
    return lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9)


def build(problem: str, seed: int):
    return digits_mlp(seed) if problem == "digits" else fmnist_mlp(seed)


def val_batches(pb):
    xv, yv = pb.val
    return [(xv[i:i + 1024], yv[i:i + 1024]) for i in range(0, len(xv), 1024)]


def train_eval(pb, init_state, opt_name, lr, budget, seed):
    model = copy.deepcopy(pb.model)
    model.load_state_dict(init_state)
    opt = make_opt(opt_name)(list(model.parameters()), lr)
    model.train()
    torch.manual_seed(seed)
    diverged = False
    for batch in pb.batches(budget, seed=seed):
        opt.zero_grad(set_to_none=True)
        loss = pb.loss_fn(model, batch)
        if not torch.isfinite(loss):
            diverged = True
            break
        loss.backward()
        opt.step()
    val = pb.evaluate("val", model)
    test = pb.evaluate("test", model)
    vloss = val.loss if (not diverged and math.isfinite(val.loss)) else math.inf
    return {"val_loss": vloss, "test_acc": test.metric, "diverged": diverged}


def job(problem, opt_name, seed, budget, search_steps):
    torch.set_num_threads(1)
    pb = build(problem, seed)
    init_state = copy.deepcopy(pb.model.state_dict())
    mk = make_opt(opt_name)
    val = val_batches(pb)
    sel = {}  # selector -> (lr, steps spent, seconds)
    torch.manual_seed(seed)
    t = time.perf_counter()
    r = F.find_lr(pb.model, mk, pb.loss_fn, pb.batch_list(search_steps, seed=seed), val,
                  steps=search_steps, progress=False)
    dt = time.perf_counter() - t
    for name in SEARCH_PICKS:
        sel[f"search:{name}"] = (r.picks[name], r.steps_spent, dt)
    window = r.window
    t = time.perf_counter()
    ramp = F.range_test(pb.model, mk, pb.loss_fn, pb.batch_list(100, seed=seed), num_it=100,
                        progress=False)
    dt = time.perf_counter() - t
    for name in RAMP_PICKS:
        sel[f"ramp:{name}"] = (ramp.picks[name], ramp.steps_spent, dt)
    t = time.perf_counter()
    reset = F.range_test(pb.model, mk, pb.loss_fn, pb.batch_list(search_steps, seed=seed), val,
                         mode="reset", start_lr=1e-5, end_lr=1.0, num=11, steps=search_steps,
                         progress=False)
    sel["wittmann:lowest"] = (reset.lr, reset.steps_spent, time.perf_counter() - t)
    for lr in GRIDS[opt_name]:
        sel[f"grid:{lr:.3g}"] = (lr, budget, None)
    cache, out = {}, {}
    for name, (lr, steps, secs) in sel.items():
        key = round(math.log10(lr), 9)
        if key not in cache:
            cache[key] = train_eval(pb, init_state, opt_name, lr, budget, seed)
        out[name] = dict(cache[key], lr=lr, steps=steps, secs=secs)
    return {"problem": problem, "opt": opt_name, "seed": seed, "results": out, "window": window,
            "trainings": len(cache)}


def fmt_loss(v):
    return "diverged" if not math.isfinite(v) else f"{v:.4f}"


def report(rows, budget_of, n_seeds):
    by = {}
    for r in rows:
        by.setdefault((r["problem"], r["opt"]), []).append(r)
    verdicts = []
    for (problem, opt), runs in sorted(by.items()):
        budget = budget_of[problem]
        grid_steps = 7 * budget
        names = list(runs[0]["results"])
        print(f"\n### {problem}, {opt}: {budget} training steps per run, {len(runs)} seeds "
              f"(grid: 7 x {budget} = {grid_steps} steps per seed)\n")
        print("| selector | lr (geo-mean over seeds) | val loss (mean) | x best grid | test acc (mean) "
              "| steps spent / seed | % of grid |")
        print("|---|---|---|---|---|---|---|")
        stats = {}
        for name in names:
            res = [run["results"][name] for run in runs]
            lr = 10 ** statistics.mean(math.log10(x["lr"]) for x in res)
            vl = [x["val_loss"] for x in res]
            v = statistics.mean(vl) if all(math.isfinite(x) for x in vl) else math.inf
            acc = statistics.mean(x["test_acc"] for x in res)
            steps = statistics.mean(x["steps"] for x in res)
            stats[name] = (lr, v, acc, steps)
        best_grid = min(v for n, (_, v, _, _) in stats.items() if n.startswith("grid:"))
        for name in names:
            lr, v, acc, steps = stats[name]
            ratio = v / best_grid if math.isfinite(v) else math.inf
            pct = f"{100 * steps / grid_steps:.1f}" if not name.startswith("grid:") else "-"
            st = f"{steps:.0f}" if not name.startswith("grid:") else f"{budget}"
            print(f"| {name} | {lr:.3g} | {fmt_loss(v)} | {ratio:.3f} | {acc:.4f} | {st} | {pct} |")
        lr, v, acc, steps = stats["search:log_midpoint"]
        ok_loss = v <= 1.05 * best_grid
        ok_steps = steps <= 0.10 * grid_steps
        verdicts.append((problem, opt, v / best_grid, 100 * steps / grid_steps, ok_loss and ok_steps))
        windows = ", ".join(f"{w[0]:.3g}..{w[1]:.3g}" for w in (run["window"] for run in runs))
        print(f"\nsearch windows per seed: {windows}")
    print("\n### target: search pick (log_midpoint) val loss <= 1.05 x best grid, at <= 10 % of the "
          "grid's steps\n")
    print("| problem | optimizer | val loss / best grid | steps, % of grid | met |")
    print("|---|---|---|---|---|")
    for problem, opt, ratio, pct, ok in verdicts:
        print(f"| {problem} | {opt} | {ratio:.3f} | {pct:.1f} | {'yes' if ok else 'NO'} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits only, 300 steps, 2 seeds")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; quick 2)")
    ap.add_argument("--digits-steps", type=int, default=None, help="training budget on digits (1000)")
    ap.add_argument("--fmnist-steps", type=int, default=2000, help="training budget on fmnist (2000)")
    ap.add_argument("--search-steps", type=int, default=20, help="steps per search trial (20)")
    ap.add_argument("--problems", default=None, help="comma list of digits,fmnist")
    ap.add_argument("--optimizers", default="adam,sgd")
    ap.add_argument("--workers", type=int, default=2, help="processes (at most 2)")
    args = ap.parse_args(argv)
    seeds = args.seeds or (2 if args.quick else 3)
    budget_of = {"digits": args.digits_steps or (300 if args.quick else 1000),
                 "fmnist": args.fmnist_steps}
    problems = args.problems.split(",") if args.problems else (
        ["digits"] if args.quick else ["fmnist", "digits"])
    if "fmnist" in problems and load_fashion_mnist() is None:
        print("Fashion-MNIST not found in /usr/share/datasets/fashion-mnist: skipped", file=sys.stderr)
        problems = [p for p in problems if p != "fmnist"]
    opts = args.optimizers.split(",")
    jobs = [(p, o, s, budget_of[p], args.search_steps) for p in problems for o in opts
            for s in range(seeds)]
    t0 = time.perf_counter()
    workers = max(1, min(2, args.workers))
    rows = []
    with ProcessPoolExecutor(max_workers=workers) as ex:
        futures = [ex.submit(job, *j) for j in jobs]
        for j, f in zip(jobs, futures):
            rows.append(f.result())
            print(f"done {j[0]} {j[1]} seed {j[2]} ({time.perf_counter() - t0:.0f}s)",
                  file=sys.stderr, flush=True)
    print(f"# benchmarks/finder.py {' '.join(sys.argv[1:])}")
    print(f"torch {torch.__version__}, {workers} processes x 1 thread, "
          f"{time.perf_counter() - t0:.0f}s wall")
    report(rows, budget_of, seeds)


if __name__ == "__main__":
    main()
