"""Calibration data for find_lr's schedule-aware peak (benchmarks/finder_calibration.md).

Stages, each cached as JSON under ``--out`` (default ``finder-calibration-out``), so an interrupted
run resumes:

``grid``        Adam + warm-up + cosine at every peak of the bench's half-decade grid (1e-4..1e-1)
                through the bench's own runner, on the tuning seed (1000), at the standard suite's
                step counts: the grid-best peak per problem (by validation loss, as the bench tunes).
``sched_grid``  the same grid for Adam + warm-up + linear decay to zero and for constant Adam.
``curves``      dense trial curves (quarter decades 1e-5..1, trials of 5/10/20/40 steps) for study.
``raw``         find_lr(schedule=..., total_steps=T) as the bench's selector runs it (10 % budget, the
                bench's probe batches) on the tuning seed: the best trial rate before scaling.
``table``       the markdown tables, and per schedule the scale (0.05-decade grid) minimising the
                worst train-loss ratio over the problems (piecewise-linear in log lr between grid runs).
``eval``        on the evaluation seeds: tuned Adam-cosine (grid-best peak, all T steps) against
                find_lr + Adam-cosine with the search counted (T - search steps of training).

One torch thread; run in the background, a few problems at a time::

    PYTHONPATH=src python benchmarks/finder_calibration.py grid sched_grid raw --out /tmp/fcal
    PYTHONPATH=src python benchmarks/finder_calibration.py table --out /tmp/fcal
    PYTHONPATH=src python benchmarks/finder_calibration.py eval table --out /tmp/fcal --tag _v1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

from autostep.bench.streams import probe_batches, train_batches
from autostep.bench.tasks import SUITES, build_problem
from autostep.bench.runner import RunConfig, run_one
from autostep.finder.peak import SCHEDULES
from autostep.finder import TrialRunner
from autostep.registry import HALF_DECADES_ADAM

REAL = ("digits_mlp", "fmnist_logreg", "fmnist_mlp", "fmnist_cnn", "char_gpt")
TUNING_SEED = 1000
TRIAL_LENGTHS = (5, 10, 20, 40)
QUARTER_DECADES = tuple(10 ** (-5 + k / 4) for k in range(21))  # 1e-5 .. 1


def _load(path: str) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _save(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def stage_grid(problems, out: str) -> None:
    path = os.path.join(out, "grid.json")
    data = _load(path)
    for p in problems:
        steps = SUITES["standard"][p]
        for lr in HALF_DECADES_ADAM:
            key = f"{p}|{lr:.3e}"
            if key in data:
                continue
            t0 = time.time()
            r = run_one(RunConfig(p, "Adam-cosine-tuned", TUNING_SEED, steps, lr=lr, role="tune"))
            data[key] = {k: r.get(k) for k in ("status", "train_loss", "val_loss", "test_metric",
                                               "diverged", "reason")}
            data[key].update(problem=p, lr=lr, steps=steps)
            _save(path, data)
            print(f"grid {p} lr={lr:.3g} train={r.get('train_loss')} val={r.get('val_loss')} "
                  f"({time.time() - t0:.0f}s)", flush=True)


def schedule_factor(schedule: str, t: int, total: int) -> float:
    """The multiplier of the peak rate at step ``t``: the bench's warm-up (T // 20 steps) + cosine,
    the same warm-up + linear decay to zero, or constant."""
    from autostep.bench.stepper import cosine_factor

    warmup = max(1, total // 20)
    if schedule == "cosine":
        return cosine_factor(t, total, warmup)
    if schedule == "linear":
        if t < warmup:
            return (t + 1) / warmup
        return max(0.0, 1.0 - (t - warmup) / max(1, total - warmup))
    return 1.0


def train_schedule(problem: str, seed: int, steps: int, peak: float, schedule: str) -> dict:
    """Adam with ``schedule`` at ``peak`` for ``steps`` steps on the bench task (as the runner)."""
    torch.set_num_threads(1)
    task = build_problem(problem, seed)
    model = task.model
    opt = torch.optim.Adam(model.parameters(), lr=peak)
    for t, batch in enumerate(train_batches(task, steps, seed)):
        for g in opt.param_groups:
            g["lr"] = peak * schedule_factor(schedule, t, steps)
        opt.zero_grad()
        loss = task.loss_fn(model, batch)
        if not math.isfinite(float(loss)):
            return {"train_loss": math.nan, "val_loss": math.nan, "diverged": True}
        loss.backward()
        opt.step()
    train, _ = task.evaluate("train")
    val, metric = task.evaluate("val")
    return {"train_loss": train, "val_loss": val, "diverged": False}


def stage_sched_grid(problems, out: str, schedules=("constant", "linear")) -> None:
    path = os.path.join(out, "sched_grid.json")
    data = _load(path)
    for sched in schedules:
        for p in problems:
            steps = SUITES["standard"][p]
            for lr in HALF_DECADES_ADAM:
                key = f"{sched}|{p}|{lr:.3e}"
                if key in data:
                    continue
                r = train_schedule(p, TUNING_SEED, steps, lr, sched)
                data[key] = dict(r, problem=p, lr=lr, steps=steps, schedule=sched)
                _save(path, data)
                print(f"{sched} {p} lr={lr:.3g} train={r['train_loss']:.4f} val={r['val_loss']:.4f}",
                      flush=True)


def stage_curves(problems, out: str, lengths=TRIAL_LENGTHS) -> None:
    path = os.path.join(out, "curves.json")
    data = _load(path)
    for p in problems:
        for k in lengths:
            key = f"{p}|{k}"
            if key in data:
                continue
            t0 = time.time()
            task = build_problem(p, TUNING_SEED)
            train = probe_batches(task, k, TUNING_SEED)
            val = probe_batches(task, 4, TUNING_SEED + 1)
            runner = TrialRunner(task.model, lambda ps, lr: torch.optim.Adam(ps, lr=lr), task.loss_fn,
                                 train, val, k)
            rows = []
            with runner:
                for lr in QUARTER_DECADES:
                    loss, steps, div = runner.run(lr)
                    rows.append((lr, loss, div))
                    if div and len(rows) >= 2 and rows[-2][2]:
                        break  # two diverged in a row: larger rates diverge too
            data[key] = {"problem": p, "trial_steps": k, "rows": rows}
            _save(path, data)
            print(f"curves {p} k={k}: {len(rows)} rates ({time.time() - t0:.0f}s)", flush=True)


def _search(problem: str, seed: int, schedule: str = "cosine"):
    """find_lr as the bench's selector runs it: the bench's probe batches, 10 % of the run."""
    from autostep.finder import find_lr

    torch.set_num_threads(1)
    steps = SUITES["standard"][problem]
    task = build_problem(problem, seed)
    budget = steps // 10
    train = probe_batches(task, max(1, budget), seed)
    val = probe_batches(task, 4, seed + 1)
    return find_lr(task.model, lambda ps, lr: torch.optim.Adam(ps, lr=lr), task.loss_fn, train, val,
                   schedule=schedule, total_steps=steps, budget=budget, progress=False)


def stage_raw(problems, out: str) -> None:
    """find_lr's best trial rate before scaling, per schedule, on the tuning seed (calibration)."""
    path = os.path.join(out, "raw.json")
    data = _load(path)
    for sched in SCHEDULES:
        for p in problems:
            key = f"{sched}|{p}"
            if key in data:
                continue
            r = _search(p, TUNING_SEED, sched)
            data[key] = {"raw": r.info["raw_lr"], "spent": r.steps_spent,
                         "trial_steps": r.info["trial_steps"], "budget": r.info["budget"],
                         "trials": [(t.lr, t.val_loss, t.steps) for t in r.trials]}
            _save(path, data)
            print(f"raw {sched} {p}: {data[key]['raw']:.3g} (k={data[key]['trial_steps']}, "
                  f"spent {r.steps_spent})", flush=True)


def grid_rows(out: str, problem: str, schedule: str) -> list:
    """The grid runs of ``schedule`` on ``problem`` (tuning seed), sorted by peak rate."""
    if schedule == "cosine":
        rows = [v for v in _load(os.path.join(out, "grid.json")).values() if v["problem"] == problem]
    else:
        rows = [v for v in _load(os.path.join(out, "sched_grid.json")).values()
                if v["problem"] == problem and v["schedule"] == schedule]
    return sorted(rows, key=lambda v: v["lr"])


def regret(out: str, problem: str, schedule: str, lr: float) -> float:
    """Train loss at peak ``lr`` (piecewise linear in log10 lr between grid runs, clamped to the
    grid; a diverged run counts as 10x the start) over the train loss of the val-best grid peak."""
    rows = grid_rows(out, problem, schedule)
    best = grid_best(out, problem, schedule)
    ref = next(v["train_loss"] for v in rows if v["lr"] == best)
    xs = [math.log10(v["lr"]) for v in rows]
    ys = [v["train_loss"] if v.get("train_loss") is not None and math.isfinite(v["train_loss"])
          else 10 * max(u["train_loss"] for u in rows if u.get("train_loss") is not None
                        and math.isfinite(u["train_loss"])) for v in rows]
    x = min(max(math.log10(lr), xs[0]), xs[-1])
    for i in range(len(xs) - 1):
        if xs[i] <= x <= xs[i + 1]:
            f = (x - xs[i]) / (xs[i + 1] - xs[i])
            return (ys[i] + f * (ys[i + 1] - ys[i])) / ref
    return ys[-1] / ref


def calibrate(out: str, problems, schedule: str) -> tuple:
    """The scale (0.05-decade grid over 0.1..3.16) minimising the worst regret over the problems."""
    raw = _load(os.path.join(out, "raw.json"))
    best = None
    for k in range(-20, 11):
        scale = 10 ** (k / 20)
        worst = max(regret(out, p, schedule, scale * raw[f"{schedule}|{p}"]["raw"]) for p in problems)
        if best is None or worst < best[1] - 1e-12:
            best = (scale, worst)
    return best


def grid_best(out: str, problem: str, schedule: str) -> float:
    """The grid-best peak of ``schedule`` by validation loss (as the bench tunes)."""
    if schedule == "cosine":
        rows = [v for v in _load(os.path.join(out, "grid.json")).values() if v["problem"] == problem]
    else:
        rows = [v for v in _load(os.path.join(out, "sched_grid.json")).values()
                if v["problem"] == problem and v["schedule"] == schedule]
    rows = [v for v in rows if v.get("val_loss") is not None and math.isfinite(v["val_loss"])]
    return min(rows, key=lambda v: v["val_loss"])["lr"]


def stage_table(problems, out: str, tag: str = "") -> None:
    """Print the calibration tables (markdown) and the scale per schedule."""
    raw = _load(os.path.join(out, "raw.json"))
    print("| schedule | problem | T | budget | trial steps | steps spent | best trial rate | "
          "grid-best peak | log10(grid-best / best trial) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for sched in SCHEDULES:
        logs = []
        for p in problems:
            r = raw[f"{sched}|{p}"]
            g = grid_best(out, p, sched)
            logs.append(math.log10(g / r["raw"]))
            print(f"| {sched} | {p} | {SUITES['standard'][p]} | {r['budget']} | {r['trial_steps']} | "
                  f"{r['spent']} | {r['raw']:.3g} | {g:.3g} | {logs[-1]:+.2f} |")
    print()
    for sched in SCHEDULES:
        logs = [math.log10(grid_best(out, p, sched) / raw[f"{sched}|{p}"]["raw"]) for p in problems]
        scale, worst = calibrate(out, problems, sched)
        per = {p: round(regret(out, p, sched, scale * raw[f"{sched}|{p}"]["raw"]), 3) for p in problems}
        print(f"- {sched}: median log10(grid-best / best trial) {statistics.median(logs):+.2f}; "
              f"minimax scale {scale:.3g}, worst interpolated train-loss ratio {worst:.3f} {per}")
    ev = _load(os.path.join(out, "eval.json"))
    if ev:
        print()
        print("| problem | seed | tuned peak | tuned train loss | find_lr peak (edge) | search steps | "
              "find_lr train loss | ratio |")
        print("|---|---|---|---|---|---|---|---|")
        for p in problems:
            ratios = []
            for key in sorted(k for k in ev if k.startswith(p + "|") and k.endswith("|tuned")):
                seed = key.split("|")[1]
                f = ev.get(f"{p}|{seed}|find_lr{tag}")
                t = ev[key]
                if f is None:
                    continue
                ratios.append(f["train_loss"] / t["train_loss"])
                print(f"| {p} | {seed} | {t['lr']:.3g} | {t['train_loss']:.4f} | {f['lr']:.3g} "
                      f"({f['raw']:.3g}) | {f['search_steps']} | {f['train_loss']:.4f} | "
                      f"{ratios[-1]:.3f} |")
            if ratios:
                print(f"| {p} | median | | | | | | **{statistics.median(ratios):.3f}** |")


def stage_eval(problems, out: str, seeds, schedule: str = "cosine", tag: str = "") -> None:
    grid = _load(os.path.join(out, "grid.json"))
    path = os.path.join(out, "eval.json")
    data = _load(path)
    for p in problems:
        steps = SUITES["standard"][p]
        rows = [v for v in grid.values() if v["problem"] == p and v["status"] == "ok"
                and v["val_loss"] is not None and math.isfinite(v["val_loss"])]
        best = min(rows, key=lambda v: v["val_loss"])["lr"]
        for s in seeds:
            key = f"{p}|{s}|tuned"
            if key not in data:
                r = run_one(RunConfig(p, "Adam-cosine-tuned", s, steps, lr=best))
                data[key] = {"train_loss": r.get("train_loss"), "test_metric": r.get("test_metric"),
                             "lr": best, "search_steps": 0}
                _save(path, data)
            key = f"{p}|{s}|find_lr{tag}"
            if key not in data:
                res = _search(p, s, schedule)
                spent = res.steps_spent
                r = run_one(RunConfig(p, "Adam-cosine-tuned", s, steps - spent, lr=res.lr))
                data[key] = {"train_loss": r.get("train_loss"), "test_metric": r.get("test_metric"),
                             "lr": res.lr, "raw": res.info.get("raw_lr"), "search_steps": spent,
                             "trial_steps": res.info.get("trial_steps")}
                _save(path, data)
            t, f = data[f"{p}|{s}|tuned"], data[key]
            print(f"eval {p} seed {s}: tuned lr {t['lr']:.3g} train {t['train_loss']:.4f} | "
                  f"find_lr lr {f['lr']:.3g} (raw {f['raw']}) spent {f['search_steps']} "
                  f"train {f['train_loss']:.4f} ratio {f['train_loss'] / t['train_loss']:.3f}",
                  flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stages", nargs="+", choices=("grid", "sched_grid", "curves", "raw", "eval", "table"))
    ap.add_argument("--problems", nargs="+", default=list(REAL), choices=REAL)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", default="finder-calibration-out")
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    for stage in args.stages:
        if stage == "grid":
            stage_grid(args.problems, args.out)
        elif stage == "sched_grid":
            stage_sched_grid(args.problems, args.out)
        elif stage == "curves":
            stage_curves(args.problems, args.out)
        elif stage == "raw":
            stage_raw(args.problems, args.out)
        elif stage == "table":
            stage_table(args.problems, args.out, args.tag)
        else:
            stage_eval(args.problems, args.out, args.seeds, tag=args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
