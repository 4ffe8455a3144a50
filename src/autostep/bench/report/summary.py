"""The numbers behind the report: per problem and method aggregates, ranks, the per-method summary
rows and the one-sentence headline computed from them."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Optional

from .common import BASELINE, RECOMMENDED, fmt, kind_of, ok_runs
from .stats import bootstrap_median_ratio, log_ratio, paired_compare, time_to_target

__all__ = ["summarize", "headline"]


def summarize(results: dict) -> dict:
    """Per problem and method: aggregated metrics, paired comparison with the baseline, compute;
    per method: ranks, wins/ties/losses, the median ratio with its bootstrap interval."""
    runs = ok_runs(results["runs"])
    by = defaultdict(list)
    for r in runs:
        by[(r["problem"], r["method"])].append(r)
    problems = list(results["plan"])
    methods = results["methods"]
    targets = {}
    for p in problems:
        adam = by.get((p, "Adam"), [])
        finals = [r["curve"][-1][1] for r in adam if r["curve"] and not r["diverged"]]
        targets[p] = statistics.median(finals) if finals else math.nan
    adam_cpu = {(r["problem"], r["seed"]): r["cpu_per_step"] for r in runs if r["method"] == "Adam"}
    tune_steps = defaultdict(int)
    tune_runs = defaultdict(int)
    for r in results.get("tuning_runs", []):
        tune_steps[(r["problem"], r["method"])] += r.get("config", {}).get("steps", r.get("steps", 0))
        tune_runs[(r["problem"], r["method"])] += 1
    table = {}
    for p in problems:
        base_runs = {r["seed"]: (r["train_loss"] if not r["diverged"] else math.inf) for r in by.get((p, BASELINE), [])}
        for m in methods:
            rs = by.get((p, m), [])
            if not rs:
                continue
            ttt = [time_to_target(r["curve"], targets[p]) if not r["diverged"] else (math.inf, math.inf)
                   for r in rs]
            ratios = [r["cpu_per_step"] / adam_cpu[(p, r["seed"])] for r in rs
                      if adam_cpu.get((p, r["seed"]))]
            by_seed = {r["seed"]: (r["train_loss"] if not r["diverged"] else math.inf) for r in rs}
            steps = statistics.median(r["steps"] for r in rs)
            search = statistics.median(r.get("search_steps", 0) for r in rs)
            table[(p, m)] = {
                "train_loss": [by_seed[r["seed"]] for r in rs],
                "by_seed": by_seed,
                "test_metric": [r["test_metric"] for r in rs],
                "mean_log_loss": [r["mean_log_loss"] for r in rs],
                "steps_to_target": [t[0] for t in ttt],
                "seconds_to_target": [t[1] for t in ttt],
                "cpu_ratio": statistics.median(ratios) if ratios else math.nan,
                "fwd": statistics.median(r["forwards_per_step"] for r in rs),
                "bwd": statistics.median(r["backwards_per_step"] for r in rs),
                "state": statistics.median(r["state_bytes"] / max(1, r["param_bytes"]) for r in rs),
                "diverged": sum(r["diverged"] for r in rs),
                "n": len(rs),
                "metric_name": rs[0]["metric_name"],
                "higher_is_better": rs[0]["higher_is_better"],
                "steps": steps,
                "search_steps": search,
                "tuning_steps": tune_steps.get((p, m), 0),
                "tuning_runs": tune_runs.get((p, m), 0),
                "compute": (tune_steps.get((p, m), 0) + steps) / max(1, steps),
                "search_notes": sorted({r["search_note"] for r in rs if r.get("search_note")}),
                "vs_base": paired_compare(by_seed, base_runs) if base_runs and m != BASELINE else None,
                "log_ratios": [log_ratio(by_seed[s], base_runs[s]) for s in sorted(set(by_seed) & set(base_runs))]
                if base_runs else [],
            }
    ranks = defaultdict(dict)
    for p in problems:
        present = [m for m in methods if (p, m) in table]
        if not present:
            continue

        def med(m, key, sign=1.0):
            vals = [v for v in table[(p, m)][key] if v is not None]
            vals = [v if math.isfinite(v) else math.inf for v in vals]
            return sign * statistics.median(vals) if vals else math.inf

        for key, sign in (("train_loss", 1.0), ("test_metric", None)):
            if sign is None:
                sign = -1.0 if table[(p, present[0])]["higher_is_better"] else 1.0
            order = sorted(present, key=lambda m: (med(m, key, sign) if not math.isnan(med(m, key, sign))
                                                   else math.inf))
            for i, m in enumerate(order, start=1):
                ranks[m][(p, key)] = i
    per_method = {}
    for m in methods:
        rows = [table[(p, m)] for p in problems if (p, m) in table]
        if not rows:
            continue
        verdicts = [t["vs_base"]["verdict"] for t in rows if t["vs_base"]]
        ratio, lo, hi = bootstrap_median_ratio({p: table[(p, m)]["log_ratios"] for p in problems
                                                 if (p, m) in table and m != BASELINE})
        per_method[m] = {"wins": verdicts.count("win"), "ties": verdicts.count("tie"),
                         "losses": verdicts.count("loss"), "undecided": verdicts.count("n/a"),
                         "ratio": ratio, "lo": lo, "hi": hi,
                         "compute": statistics.median(t["compute"] for t in rows),
                         "search": statistics.median(t["search_steps"] / max(1, t["steps"]) for t in rows)}
    exact = {r["problem"]: r.get("optimum_exact", False) for r in runs}
    return {"table": table, "targets": targets, "ranks": ranks, "problems": problems, "methods": methods,
            "exact": exact, "per_method": per_method,
            "has_baseline": any((p, BASELINE) in table for p in problems)}


def overhead_ratios(results: dict) -> dict:
    oh = results.get("overhead") or {}
    return {r["method"]: r["ratio"] for r in oh.get("rows", [])}


def summary_rows(s: dict, overhead: dict) -> list:
    rows = []
    for m in s["methods"]:
        r = s["ranks"].get(m)
        if not r:
            continue
        tr = [v for (p, k), v in r.items() if k == "train_loss"]
        te = [v for (p, k), v in r.items() if k == "test_metric"]
        cpu = [s["table"][(p, m)]["cpu_ratio"] for p in s["problems"] if (p, m) in s["table"]]
        cpu = [c for c in cpu if math.isfinite(c)]
        div = sum(s["table"][(p, m)]["diverged"] for p in s["problems"] if (p, m) in s["table"])
        pm = s["per_method"][m]
        rows.append({"method": m, "rank_train": statistics.mean(tr), "rank_test": statistics.mean(te),
                     "cpu_runs": statistics.median(cpu) if cpu else math.nan,
                     "cpu_controlled": overhead.get(m, math.nan), "diverged": div, "problems": len(tr),
                     **pm})
    def key(row):
        ratio = row["ratio"] if not math.isnan(row["ratio"]) else math.inf
        if row["method"] == BASELINE:
            ratio = 1.0
        return (ratio, (row["rank_train"] + row["rank_test"]) / 2)
    rows.sort(key=key)
    return rows


def headline(results: dict, s: dict) -> tuple[str, Optional[str]]:
    """One sentence computed from the data: which method to use and how it stands against the tuned
    baseline; returns (sentence, recommended method)."""
    pm = s["per_method"]
    untuned = [m for m in pm if kind_of(m) != "tuned" and m != BASELINE]
    if not untuned:
        return "No method without grid tuning was run, so there is nothing to recommend.", None
    if RECOMMENDED in pm:
        rec, lead = RECOMMENDED, ""
    else:
        def order(m):
            ratio = pm[m]["ratio"]
            ranks = s["ranks"].get(m, {})
            mean_rank = statistics.mean(ranks.values()) if ranks else math.inf
            return (ratio if not math.isnan(ratio) else math.inf, mean_rank)
        rec = min(untuned, key=order)
        lead = f"`{RECOMMENDED}` is not in this run; of the methods that do not tune on a grid, "
    row = pm[rec]
    n = sum(1 for p in s["problems"] if (p, rec) in s["table"])
    if not s["has_baseline"]:
        text = (f"{lead}use `{rec}`: the best mean rank over {n} problems (the tuned baseline "
                f"`{BASELINE}` was not run, so there is no ratio).")
        return text[0].upper() + text[1:], rec
    base_compute = pm.get(BASELINE, {}).get("compute", math.nan)
    if math.isnan(row["ratio"]):
        stand = "its train loss could not be compared with the baseline's"
    else:
        rel = "below" if row["hi"] < 1 else "above" if row["lo"] > 1 else "level with"
        stand = (f"its final train loss is a median {row['ratio']:.2f}× that of grid-tuned Adam + warm-up + "
                 f"cosine (95% bootstrap interval over seeds {fmt(row['lo'], 3)}–{fmt(row['hi'], 3)}: "
                 f"{rel} it), with {_n(row['wins'], 'win')}, {_n(row['ties'], 'tie')} and {_n(row['losses'], 'loss')} "
                 f"over {n} problems (paired t-test over seeds)")
    compute = (f", at {row['compute']:.2f}× one run's steps against the baseline's "
               f"{base_compute:.0f}× (its grid included)") if math.isfinite(base_compute) else ""
    text = f"{lead}use `{rec}`: {stand}{compute}."
    return text[0].upper() + text[1:], rec


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "es" if word.endswith("s") else "s")
