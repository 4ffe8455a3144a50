"""Running a benchmark suite: tuning grids, paired evaluation runs, resume, progress, report."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Optional, Sequence

from .. import registry
from .._progress import progress_bar
from .tasks import PROBLEMS, SUITES, DataMissing, build_problem
from .runner import RunConfig, load_run, run_one, save_run

__all__ = ["run_bench", "TUNING_SEED", "default_methods", "LONG_SUITE_METHODS", "OVERHEAD_PLAN"]

#: seed of the tuning runs (never one of the evaluation seeds)
TUNING_SEED = 1000

#: the ``long`` suite's default methods (besides ``Autostep`` and every ``Autostep-*`` design): the
#: tuned baselines, the fair peers and the best of each autostep family, so it fits in an hour on 2 cores
LONG_SUITE_METHODS = ("Adam", "Adam-cosine-tuned", "Adam-linear-tuned", "Prodigy-cosine",
                      "ScheduleFree-AdamW-AlgoPerf", "MoMo-Adam", "ProdigyPlusScheduleFree",
                      "find_lr+Adam-cosine", "AutoLR+Adam", "ALSALS-smooth")

#: suite -> (problem preference, rounds, steps per round) of the controlled overhead measurement
OVERHEAD_PLAN = {
    "tiny": (("quadratic", "digits_mlp"), 2, 3),
    "quick": (("digits_mlp", "quadratic"), 6, 20),
    "standard": (("fmnist_mlp", "digits_mlp"), 6, 20),
    "long": (("fmnist_mlp",), 6, 20),
}


def default_methods(suite: str = "quick") -> list[str]:
    """Every registered method (unavailable peers are reported and skipped at run time); for the
    ``long`` suite, ``Autostep``, its designs and :data:`LONG_SUITE_METHODS`."""
    if suite == "long":
        autostep = [m for m in registry.REGISTRY if m == "Autostep" or m.startswith("Autostep-")]
        return autostep + [m for m in LONG_SUITE_METHODS if m in registry.REGISTRY]
    return list(registry.REGISTRY)


def _tick(bar, label: str) -> None:
    """One more run done on the progress bar (``None``: no bar)."""
    if bar is not None:
        bar.set_postfix_str(label[:40])
        bar.update(1)


def _execute(configs: Sequence[RunConfig], out_dir: str, workers: int, bar) -> list[dict]:
    """Run configs not already on disk; every result is written to its own JSON as it finishes."""
    results, todo = [], []
    for cfg in configs:
        done = load_run(out_dir, cfg)
        if done is not None:
            results.append(done)
            _tick(bar, f"{cfg.key()} (cached)")
        else:
            todo.append(cfg)
    if workers <= 1 or len(todo) <= 1:
        for cfg in todo:
            res = run_one(cfg)
            save_run(out_dir, cfg, res)
            results.append(res)
            _tick(bar, cfg.key())
        return results
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(run_one, cfg): cfg for cfg in todo}
        for fut in as_completed(futures):
            cfg = futures[fut]
            res = fut.result()
            save_run(out_dir, cfg, res)
            results.append(res)
            _tick(bar, cfg.key())
    return results


def _best_lr(runs: list[dict]) -> Optional[float]:
    ok = [r for r in runs if r.get("status") == "ok" and math.isfinite(r.get("val_loss", math.nan))]
    if not ok:
        return None
    return min(ok, key=lambda r: r["val_loss"])["lr"]


def run_bench(suite: str = "quick", out_dir: str = "bench-out", methods: Optional[Sequence[str]] = None,
              problems: Optional[Sequence[str]] = None, seeds: Sequence[int] = (0, 1, 2),
              workers: int = 2, data_dir: Optional[str] = None, steps: Optional[int] = None,
              progress: bool = True, report: bool = True, log: Callable = print,
              device: str = "cpu", overhead_check: bool = True) -> dict:
    """Run a suite and write ``out_dir/results.json`` and (``report=True``) the report and plots.

    Finished runs found in ``out_dir/runs`` are reused (resume).  ``device="cuda"`` trains on the
    GPU (times are then synchronised wall-clock seconds).  ``overhead_check`` adds the controlled
    overhead measurement (:mod:`autostep.bench.overhead`: every method stepped in turn in this
    process, on one problem of the suite), the CPU-time figure to quote.  ``progress``: a tqdm bar of
    the runs on stderr (``True``), none (``False``), or only when stderr is a terminal (``None``).
    Returns the results dict.
    """
    if str(device).startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but torch.cuda.is_available() is False")
    elif device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    plan = dict(SUITES[suite])
    if problems:
        unknown = [p for p in problems if p not in PROBLEMS]
        if unknown:
            raise ValueError(f"unknown problems {unknown}; choose from {', '.join(PROBLEMS)}")
        default_steps = max(plan.values()) if plan else 300
        plan = {p: plan.get(p, SUITES["standard"].get(p, default_steps)) for p in problems}
    if steps is not None:
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        plan = {p: steps for p in plan}
    methods = list(methods or default_methods(suite))
    unknown = [m for m in methods if m not in registry.REGISTRY]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; see autostep.list_methods()")
    if "Adam" not in methods:
        methods.insert(0, "Adam")  # the reference for time ratios and targets
    seeds = list(seeds)
    if not seeds or TUNING_SEED in seeds:
        raise ValueError(f"seeds must be non-empty and exclude the tuning seed {TUNING_SEED}")
    os.makedirs(out_dir, exist_ok=True)

    notes = []
    for p in list(plan):
        try:
            build_problem(p, 0, data_dir)
        except DataMissing as exc:
            notes.append(f"problem {p} skipped: {exc}")
            del plan[p]
    for m in list(methods):
        reason = registry.get(m).missing_reason()
        if reason:
            notes.append(f"method {m} skipped: {reason}")
            methods.remove(m)
    for n in notes:
        log(n)

    tuned = [m for m in methods if registry.get(m).kind == "tuned"]
    tune_cfgs = [RunConfig(p, m, TUNING_SEED, n, lr=lr, role="tune", data_dir=data_dir, device=device)
                 for p, n in plan.items() for m in tuned for lr in registry.get(m).grid]
    n_eval = len(plan) * len(methods) * len(seeds)
    bar = progress_bar(progress, len(tune_cfgs) + n_eval, "bench", unit="run")
    t0 = time.time()
    try:
        tune_runs = _execute(tune_cfgs, out_dir, workers, bar)
        chosen = {}
        for p in plan:
            for m in tuned:
                chosen[(p, m)] = _best_lr([r for r in tune_runs if r["problem"] == p and r["method"] == m])
        eval_cfgs = []
        for p, n in plan.items():
            for m in methods:
                if registry.get(m).kind == "tuned" and chosen.get((p, m)) is None:
                    notes.append(f"{m} on {p}: every grid rate diverged; not evaluated")
                    continue
                for s in seeds:
                    eval_cfgs.append(RunConfig(p, m, s, n, lr=chosen.get((p, m)), data_dir=data_dir,
                                               device=device))
        if bar is not None:
            bar.total = len(tune_cfgs) + len(eval_cfgs)
            bar.refresh()
        eval_runs = _execute(eval_cfgs, out_dir, workers, bar)
    finally:
        if bar is not None:
            bar.close()
    overhead = None
    if overhead_check:
        overhead = _overhead(suite, plan, methods, chosen, out_dir, data_dir, device, notes, log)
    results = {
        "suite": suite,
        "device": device,
        "plan": plan,
        "methods": methods,
        "seeds": seeds,
        "tuning_seed": TUNING_SEED,
        "chosen_lr": {f"{p}|{m}": lr for (p, m), lr in chosen.items()},
        "notes": notes,
        "wall_s": time.time() - t0,
        "runs": [r for r in eval_runs],
        "tuning_runs": [r for r in tune_runs],
        "overhead": overhead,
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f)
    if report:
        from .report import write_report
        path = write_report(results, out_dir)
        log(f"report: {path}")
    return results


def _overhead(suite, plan, methods, chosen, out_dir, data_dir, device, notes, log) -> Optional[dict]:
    """The controlled overhead table on the suite's overhead problem (None when none applies)."""
    if device != "cpu":
        notes.append("controlled overhead measurement skipped: it runs on the CPU suites only")
        return None
    prefs, blocks, block = OVERHEAD_PLAN.get(suite, (tuple(plan), 6, 20))
    problem = next((p for p in prefs if p in plan), next(iter(plan), None))
    if problem is None:
        return None
    lrs = {m: lr for (p, m), lr in chosen.items() if p == problem and lr is not None}
    from .overhead import load_or_measure
    try:
        return load_or_measure(out_dir, problem, methods, blocks=blocks, block=block, seed=0,
                               data_dir=data_dir, lrs=lrs)
    except Exception as exc:  # the runs are done; a failed measurement must not lose them
        notes.append(f"controlled overhead measurement failed: {type(exc).__name__}: {exc}")
        return None
