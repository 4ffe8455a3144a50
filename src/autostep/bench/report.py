"""The benchmark report: a computed headline, paired statistics against the tuned baseline, the
controlled overhead table, per-problem tables and figures.

Statistics (the report says the same):

* **wins / ties / losses** against grid-tuned Adam + warm-up + cosine (:data:`BASELINE`), per problem:
  a two-sided paired t-test (95 %) on the per-seed log ratio of final train losses, seeds paired
  (each seed fixes initialisation and data order for every method).  A tie is a difference the
  seeds cannot tell from zero; one seed cannot, so with one seed every comparison is ``n/a``.  A run
  that diverges where the baseline does not is a loss (and the reverse a win).
* **median train-loss ratio**: the median over problems of each problem's geometric-mean ratio to the
  baseline, with a 95 % percentile bootstrap interval over seeds (seeds resampled with replacement,
  2000 resamples, fixed generator).
"""

from __future__ import annotations

import math
import os
import random
import statistics
from collections import defaultdict
from typing import Optional

__all__ = ["write_report", "time_to_target", "summarize", "SECTIONS", "paired_compare", "figures",
           "method_styles", "BASELINE", "RECOMMENDED", "headline"]

#: section titles every report contains (tests check them)
SECTIONS = ("## Summary", "## Overhead (controlled)", "## Per-problem results", "## Tuning", "## Plots",
            "## Notes")
#: the tuned baseline every method is compared with, and the method the report recommends if present
BASELINE = "Adam-cosine-tuned"
RECOMMENDED = "Autostep"
LOSS_FLOOR = 1e-12  # suboptimalities below this are treated as equal (exact-optimum problems)

# two-sided 95 % quantiles of Student's t, by degrees of freedom
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def _t975(df: int) -> float:
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975)
    for k in keys:
        if df < k:
            return _T975[k]  # the next larger df tabulated below it is conservative enough
    return 1.96


def _ok(runs):
    return [r for r in runs if r.get("status") == "ok"]


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    if abs(x) >= 1e4 or (abs(x) < 1e-3 and x != 0):
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def _med_range(values, never: str = "diverged") -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    finite = [v for v in vals if math.isfinite(v)]
    if not finite:
        return never
    med = statistics.median(sorted(vals, key=lambda v: v if math.isfinite(v) else math.inf))
    return f"{_fmt(med)} [{_fmt(min(finite))}, {_fmt(max(finite))}]"


def time_to_target(curve: list, target: float) -> tuple[float, float]:
    """(steps, CPU seconds) at the first curve point whose smoothed loss is <= target; inf if never."""
    for step, ema, _lr, cpu in curve:
        if ema is not None and math.isfinite(ema) and ema <= target:
            return float(step), float(cpu)
    return math.inf, math.inf


# ---------------------------------------------------------------------------------- statistics
def _log_ratio(m: float, b: float) -> float:
    """log(m / b) of two final train losses; a divergence (inf / NaN) is +inf on its side."""
    bad_m = m is None or not math.isfinite(m)
    bad_b = b is None or not math.isfinite(b)
    if bad_m and bad_b:
        return 0.0
    if bad_m:
        return math.inf
    if bad_b:
        return -math.inf
    return math.log(max(m, LOSS_FLOOR)) - math.log(max(b, LOSS_FLOOR))


def paired_compare(method: dict, base: dict) -> dict:
    """Compare per-seed final train losses ``{seed: loss}`` of a method and the baseline.

    Returns ``verdict`` ("win", "tie", "loss" or "n/a" with fewer than two paired seeds), the
    geometric-mean ``ratio`` and its 95 % paired-t interval ``lo``/``hi``, and ``n`` (paired seeds).
    """
    seeds = sorted(set(method) & set(base))
    d = [_log_ratio(method[s], base[s]) for s in seeds]
    out = {"n": len(d), "ratio": math.nan, "lo": math.nan, "hi": math.nan, "verdict": "n/a"}
    if not d:
        return out
    if any(math.isinf(x) for x in d):
        pos, neg = any(x == math.inf for x in d), any(x == -math.inf for x in d)
        out["ratio"] = math.exp(statistics.median(d)) if not (pos and neg) else math.nan
        out["verdict"] = "loss" if pos and not neg else "win" if neg and not pos else "tie"
        out["lo"], out["hi"] = (1.0, math.inf) if pos and not neg else (0.0, 1.0) if neg else (0.0, math.inf)
        return out
    mean = statistics.fmean(d)
    out["ratio"] = math.exp(mean)
    if len(d) < 2:
        return out
    sd = statistics.stdev(d)
    half = _t975(len(d) - 1) * sd / math.sqrt(len(d))
    lo, hi = mean - half, mean + half
    out["lo"], out["hi"] = math.exp(lo), math.exp(hi)
    out["verdict"] = "win" if hi < 0 else "loss" if lo > 0 else "tie"
    return out


def _bootstrap_median_ratio(per_problem: dict, n_boot: int = 2000, seed: int = 0) -> tuple:
    """Median over problems of the geometric-mean ratio, and its 95 % bootstrap interval over seeds.

    ``per_problem`` maps a problem to its list of per-seed log ratios (paired by seed)."""
    probs = {p: d for p, d in per_problem.items() if d}
    if not probs:
        return math.nan, math.nan, math.nan

    def stat(sample: dict) -> float:
        vals = []
        for d in sample.values():
            vals.append(math.inf if any(x == math.inf for x in d) and not any(x == -math.inf for x in d)
                        else -math.inf if any(x == -math.inf for x in d) and not any(x == math.inf for x in d)
                        else statistics.fmean([x for x in d if math.isfinite(x)] or [0.0]))
        return statistics.median(vals)

    point = stat(probs)
    rng = random.Random(seed)  # a private generator: the report never touches global randomness
    boots = []
    for _ in range(n_boot):
        boots.append(stat({p: [d[rng.randrange(len(d))] for _ in d] for p, d in probs.items()}))
    boots.sort()
    lo, hi = boots[int(0.025 * (n_boot - 1))], boots[int(math.ceil(0.975 * (n_boot - 1)))]
    exp = lambda x: math.exp(x) if math.isfinite(x) else (math.inf if x > 0 else 0.0)  # noqa: E731
    return exp(point), exp(lo), exp(hi)


def _family(name: str) -> str:
    from .. import registry
    spec = registry.REGISTRY.get(name)
    return spec.family if spec else "autostep"


def _kind(name: str) -> Optional[str]:
    from .. import registry
    spec = registry.REGISTRY.get(name)
    return spec.kind if spec else None


def summarize(results: dict) -> dict:
    """Per problem and method: aggregated metrics, paired comparison with the baseline, compute;
    per method: ranks, wins/ties/losses, the median ratio with its bootstrap interval."""
    runs = _ok(results["runs"])
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
                "log_ratios": [_log_ratio(by_seed[s], base_runs[s]) for s in sorted(set(by_seed) & set(base_runs))]
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
        ratio, lo, hi = _bootstrap_median_ratio({p: table[(p, m)]["log_ratios"] for p in problems
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


def _overhead_ratios(results: dict) -> dict:
    oh = results.get("overhead") or {}
    return {r["method"]: r["ratio"] for r in oh.get("rows", [])}


def _summary_rows(s: dict, overhead: dict) -> list:
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
    untuned = [m for m in pm if _kind(m) != "tuned" and m != BASELINE]
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
                 f"cosine (95% bootstrap interval over seeds {_fmt(row['lo'], 3)}–{_fmt(row['hi'], 3)}: "
                 f"{rel} it), with {_n(row['wins'], 'win')}, {_n(row['ties'], 'tie')} and {_n(row['losses'], 'loss')} "
                 f"over {n} problems (paired t-test over seeds)")
    compute = (f", at {row['compute']:.2f}× one run's steps against the baseline's "
               f"{base_compute:.0f}× (its grid included)") if math.isfinite(base_compute) else ""
    text = f"{lead}use `{rec}`: {stand}{compute}."
    return text[0].upper() + text[1:], rec


# ---------------------------------------------------------------------------------- report
def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "es" if word.endswith("s") else "s")


def _compute_cell(t: dict, m: str) -> str:
    steps = int(t["steps"])
    if t["tuning_runs"]:
        return f"{int(t['tuning_steps'] + steps)} ({t['tuning_runs']} grid runs × {steps} + {steps})"
    if t["search_steps"]:
        return f"{steps} (search {int(t['search_steps'])})"
    return f"{steps}"


def _ratio_cell(c: Optional[dict]) -> str:
    if not c:
        return "–"
    if math.isnan(c["ratio"]):
        return c["verdict"]
    interval = "" if math.isnan(c["lo"]) else f" [{_fmt(c['lo'], 3)}, {_fmt(c['hi'], 3)}]"
    return f"{c['ratio']:.3g}{interval} {c['verdict']}"


def write_report(results: dict, out_dir: str) -> str:
    """Write ``report.md`` and the figures into ``out_dir``; returns the report's path."""
    s = summarize(results)
    sentence, rec = headline(results, s)
    overhead = _overhead_ratios(results)
    figs = _save_figures(results, s, out_dir, rec)
    lines = [f"# autostep bench — suite `{results['suite']}`", ""]
    device = results.get("device", "cpu")
    clock = "synchronised wall-clock seconds on the GPU" if device != "cpu" else "process CPU seconds"
    lines += ["## Summary", "", f"**{sentence}**", ""]
    lines.append(f"Device: {device}; times are {clock}, each run timed after a discarded warm-up run of "
                 f"the same method and problem in its worker (no start-up cost).")
    lines.append(f"Problems: {', '.join(f'{p} ({n} steps)' for p, n in results['plan'].items())}. "
                 f"Evaluation seeds {results['seeds']} (each fixes initialisation and data order for "
                 f"every method); tuning seed {results['tuning_seed']}. Wall time "
                 f"{results['wall_s']:.0f} s. Numbers are median [min, max] over seeds.")
    lines += ["",
              f"Against grid-tuned Adam + warm-up + cosine (`{BASELINE}`): **W/T/L** counts problems won, "
              "tied and lost by a two-sided paired t-test (95%) on the per-seed log ratio of final train "
              "losses (a tie: the seeds cannot tell the difference from zero; n/a: fewer than two seeds); "
              "**ratio** is the median over problems of the geometric-mean train-loss ratio, with its 95% "
              "bootstrap interval over seeds (2000 resamples). **Compute** is all training steps the method "
              "needs per problem ÷ one run's budget: the grid runs for tuned methods; searches happen "
              "inside the budget (share in brackets). **CPU/step ÷ Adam (controlled)** is the measurement "
              "to quote (see the next section); the per-run column divides times taken in different "
              "processes. Ranks: mean over problems, 1 = best.", "",
              "| method | family | W/T/L vs tuned | train-loss ratio [95% CI] | compute ÷ one run | "
              "CPU/step ÷ Adam (controlled) | CPU/step ÷ Adam (runs) | rank: train loss | rank: test metric "
              "| divergences | problems |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in _summary_rows(s, overhead):
        m = row["method"]
        name = f"**{m}**" if m in (rec, BASELINE) else m
        if m == BASELINE:
            wtl, ratio = "baseline", "1"
        elif not s["has_baseline"]:
            wtl, ratio = "–", "–"
        else:
            wtl = f"{row['wins']}/{row['ties']}/{row['losses']}" + (f" ({row['undecided']} n/a)" if row["undecided"] else "")
            ratio = "–" if math.isnan(row["ratio"]) else f"{_fmt(row['ratio'], 3)} [{_fmt(row['lo'], 3)}, {_fmt(row['hi'], 3)}]"
        search = f" (search {row['search']:.0%})" if row["search"] > 0 else ""
        lines.append(f"| {name} | {_family(m)} | {wtl} | {ratio} | {row['compute']:.2f}{search} | "
                     f"{_fmt(row['cpu_controlled'], 3)} | {_fmt(row['cpu_runs'], 3)} | {row['rank_train']:.2f} | "
                     f"{row['rank_test']:.2f} | {row['diverged']} | {row['problems']} |")
    lines += ["", "## Overhead (controlled)", ""]
    oh = results.get("overhead")
    if oh:
        lines += [f"**The figure to quote for CPU cost.** On `{oh['problem']}`, every method trains its own "
                  f"copy of the problem in this one process, in {oh['blocks']} rounds of {oh['block']} steps "
                  f"taken in turn (after one discarded warm-up round), on one thread; the ratio is the median "
                  f"over rounds of the method's CPU time per step ÷ Adam's in the same round. Selectors and "
                  f"tuned methods are timed on their training optimizer (their search and tuning are in the "
                  f"compute column).", "",
                  "| method | CPU/step ÷ Adam | ms/step | forwards/step | timed rounds | note |",
                  "|---|---|---|---|---|---|"]
        for r in sorted(oh["rows"], key=lambda r: r["ratio"] if math.isfinite(r["ratio"]) else math.inf):
            lines.append(f"| {r['method']} | {_fmt(r['ratio'], 3)} | {_fmt(r['ms_per_step'], 3)} | "
                         f"{_fmt(r['forwards_per_step'], 3)} | {r['rounds']} | {r['note'] or ''} |")
    else:
        lines.append("Not measured in this run (GPU suites, or `overhead_check=False`).")
    lines += ["", "## Per-problem results", ""]
    for p in s["problems"]:
        present = [m for m in s["methods"] if (p, m) in s["table"]]
        if not present:
            continue
        metric = s["table"][(p, present[0])]["metric_name"]
        lines += [f"### {p}", "",
                  f"Target for time-to-target: Adam's median final smoothed training loss "
                  f"({_fmt(s['targets'][p])})."
                  + (" Train loss is the exact suboptimality (the optimum is known)."
                     if s["exact"].get(p) else "")
                  + f" Ratio: geometric mean over seeds of train loss ÷ `{BASELINE}`'s, 95% paired-t interval, "
                    "verdict.", "",
                  f"| method | train loss | ratio vs tuned [95% CI] | test {metric} | mean log loss | steps to "
                  f"target | CPU s to target | CPU/step ÷ Adam (runs) | fwd/step | bwd/step | state ÷ params | "
                  f"total steps (tuning, search) | diverged |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in present:
            t = s["table"][(p, m)]
            lines.append(
                f"| {m} | {_med_range(t['train_loss'])} | {_ratio_cell(t['vs_base'])} | "
                f"{_med_range(t['test_metric'])} | "
                f"{_med_range(t['mean_log_loss'])} | {_med_range(t['steps_to_target'], 'not reached')} | "
                f"{_med_range(t['seconds_to_target'], 'not reached')} | {_fmt(t['cpu_ratio'], 3)} | {t['fwd']:.2f} | "
                f"{t['bwd']:.2f} | {t['state']:.2f} | {_compute_cell(t, m)} | {t['diverged']}/{t['n']} |")
        lines.append("")
    lines += ["## Tuning", "",
              "Peak learning rates chosen on the tuning seed by validation loss (7-point half-decade "
              "grids; the grid runs are kept in `runs/` and drawn in the LR-sensitivity figures).", "",
              "| problem | method | chosen peak LR | grid runs |", "|---|---|---|---|"]
    for key, lr in results.get("chosen_lr", {}).items():
        p, m = key.split("|")
        n = sum(1 for r in results["tuning_runs"] if r["problem"] == p and r["method"] == m)
        lines.append(f"| {p} | {m} | {_fmt(lr) if lr else 'none (all diverged)'} | {n} |")
    tune_steps = sum(r.get("steps", 0) for r in _ok(results["tuning_runs"]))
    lines += ["", f"Tuning cost: {len(results['tuning_runs'])} runs, {tune_steps} training steps.", ""]
    lines += ["## Plots", ""]
    if figs:
        for path, caption in figs:
            lines += [f"![{os.path.basename(path)}]({os.path.basename(path)})", "", f"*{caption}*", ""]
    else:
        lines.append("(matplotlib is not installed: `pip install 'autostep[plot]'` for the figures)")
    lines += ["", "## Notes", ""]
    notes = list(results.get("notes", []))
    for (p, m), t in s["table"].items():
        for note in t["search_notes"]:
            notes.append(f"{m} on {p}: {note}")
    for r in results["runs"]:
        if r.get("status") == "error":
            notes.append(f"{r['method']} on {r['problem']} seed {r['seed']} failed: {r['reason']}")
        elif r.get("status") == "skipped":
            notes.append(f"{r['method']} on {r['problem']} skipped: {r['reason']}")
    lines += [f"- {n}" for n in dict.fromkeys(notes)] or ["- none"]
    lines.append("")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


# ---------------------------------------------------------------------------------- figures
GREY = "#c8c8c8"  # methods outside a panel's top-k
TOP_K = 6  # coloured lines per panel besides the two references
#: colours by family: autostep cool hues, peers warm hues, baselines dark neutrals
PALETTES = {  # few, well-separated hues per family; a family larger than its palette reuses a hue
    #               with another line style (never twice in colour in one panel)
    "autostep": ("#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#637939", "#7b4173", "#005f5f"),
    "peer": ("#ff7f0e", "#d62728", "#8c564b", "#e377c2", "#e6ab02", "#ce1256"),
    "baseline": ("#636363", "#b8860b", "#843c39"),
}
FAMILY_LS = {"autostep": "-", "peer": "--", "baseline": "-."}
REC_COLOR = "#0000cd"  # the recommended default: deep blue, boldest
BASE_COLOR = "#000000"  # the tuned baseline: black, boldest
FAMILY_TITLES = {"autostep": "autostep methods", "peer": "peers", "baseline": "baselines"}


def method_styles(methods: list, recommended: Optional[str]) -> dict:
    """One (colour, line style, width) per method, the same in every figure: coloured by family,
    the recommended method and the tuned baseline boldest."""
    styles, counters = {}, defaultdict(int)
    for m in methods:
        if m == recommended:
            styles[m] = {"color": REC_COLOR, "ls": "-", "lw": 3.0, "zorder": 5}
            continue
        if m == BASELINE:
            styles[m] = {"color": BASE_COLOR, "ls": "-", "lw": 3.0, "zorder": 5}
            continue
        fam = _family(m)
        pal = PALETTES.get(fam, PALETTES["autostep"])
        i = counters[fam]
        counters[fam] += 1
        first = FAMILY_LS.get(fam, "-")
        alt = [first] + [x for x in ("-", "--", "-.", ":") if x != first]
        ls = alt[(i // len(pal)) % len(alt)]
        styles[m] = {"color": pal[i % len(pal)], "ls": ls, "lw": 1.6, "zorder": 3}
    return styles


def _pick(candidates: list, score: dict, styles: dict, k: int, taken: set) -> tuple[list, list]:
    """Top ``k`` candidates by ``score`` (lower is better) with colours not yet ``taken``; the rest."""
    ordered = sorted(candidates, key=lambda m: score.get(m, math.inf))
    shown, rest = [], []
    for m in ordered:
        c = styles[m]["color"]
        if len(shown) < k and c not in taken:
            shown.append(m)
            taken.add(c)
        else:
            rest.append(m)
    return shown, rest


def _bulk(lines: dict, log: bool, always=()) -> tuple:
    """Axis limits that follow the bulk of the data.

    A line whose extent reaches more than ``tolerance`` beyond the median line's (two decades on a
    log axis; the median line's span on a linear one) is clipped there, unless it is in ``always``
    (the lines a reader compares: they are always shown whole).  Returns (lo, hi, names clipped)."""
    ext = {}
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    for name, ys in lines.items():
        vals = [y for y in ys if y is not None and math.isfinite(y) and (y > 0 or not log)]
        if vals:
            ext[name] = (f(min(vals)), f(max(vals)))
    if not ext:
        return None, None, []
    med_lo = statistics.median(e[0] for e in ext.values())
    med_hi = statistics.median(e[1] for e in ext.values())
    tol = 2.0 if log else max(med_hi - med_lo, abs(med_hi) * 0.1, 1e-12)
    lo = min(e[0] for n, e in ext.items() if e[0] >= med_lo - tol or n in always)
    hi = max(e[1] for n, e in ext.items() if e[1] <= med_hi + tol or n in always)
    pad = 0.05 * max(hi - lo, 1e-9 if not log else 0.02)
    lo, hi = lo - pad, hi + pad
    clipped = [n for n, e in ext.items() if e[0] < lo - 1e-12 or e[1] > hi + 1e-12]
    if log:
        return 10 ** lo, 10 ** hi, clipped
    return lo, hi, clipped


def _plain_log_labels(ax, lo: float, hi: float) -> None:
    """On a log axis spanning under a decade, label ticks as plain numbers (2.1, not 2.1×10⁰)."""
    if lo > 0 and hi / lo < 10:
        from matplotlib import ticker
        fmt = ticker.FuncFormatter(lambda v, _pos: f"{v:.3g}")
        ax.yaxis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(fmt)


def _clip_note(clipped: list, shown: set) -> str:
    named = [c for c in clipped if c in shown]
    others = len(clipped) - len(named)
    if not clipped:
        return ""
    parts = ", ".join(named[:3]) + (f" +{len(named) - 3}" if len(named) > 3 else "")
    if others:
        parts = (parts + ", " if parts else "") + f"{others} grey"
    return f"\n(clipped to the bulk: {parts})"


def _figure(figsize):
    """A Figure on the Agg canvas (no global backend switch, safe inside any application)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _median_curve(curves: list, x_index: int) -> tuple:
    curves = [c for c in curves if c]
    if not curves:
        return [], [], [], []
    n = min(len(c) for c in curves)
    xs = [statistics.median(c[i][x_index] for c in curves) for i in range(n)]
    ys = [[c[i][1] for c in curves] for i in range(n)]
    return xs, [statistics.median(v) for v in ys], [min(v) for v in ys], [max(v) for v in ys]


def _legend(ax, handles, title=None):
    """A legend beside the axes (never over the data)."""
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  fontsize=8, title=title, title_fontsize=8, frameon=False)


def _ref_label(m: str, recommended: Optional[str]) -> str:
    return m + (" (recommended)" if m == recommended else " (tuned baseline)" if m == BASELINE else "")


def _line_handle(label, style):
    from matplotlib.lines import Line2D
    return Line2D([], [], label=label, color=style["color"], ls=style.get("ls", "-"), lw=style.get("lw", 1.5))


def figures(results: dict, s: dict, recommended: Optional[str] = None) -> list:
    """Every figure of the report as ``(file name, Figure, one-line caption)``.  Needs matplotlib."""
    runs = _ok(results["runs"])
    styles = method_styles(s["methods"], recommended)
    refs = [m for m in (recommended, BASELINE) if m]
    out = []
    for p in s["problems"]:
        present = [m for m in s["methods"] if (p, m) in s["table"]]
        if not present:
            continue
        score = {m: statistics.median([v if math.isfinite(v) else math.inf for v in s["table"][(p, m)]["train_loss"]])
                 for m in present}
        ref_here = [m for m in refs if m in present]
        fams = [f for f in ("autostep", "peer", "baseline")
                if any(_family(m) == f and m not in ref_here for m in present)] or ["autostep"]
        fig = _figure((16, 3.4 * len(fams) + 0.6))
        axes = fig.subplots(len(fams), 3, squeeze=False)
        curves = {m: [r["curve"] for r in runs if r["problem"] == p and r["method"] == m and not r["diverged"]]
                  for m in present}
        seed0 = {}
        for m in present:
            rs = sorted((r for r in runs if r["problem"] == p and r["method"] == m), key=lambda r: r["seed"])
            if rs and rs[0]["curve"]:
                seed0[m] = rs[0]["curve"]
        for row, fam in enumerate(fams):
            members = [m for m in present if _family(m) == fam and m not in ref_here]
            shown, rest = _pick(members, score, styles, TOP_K, {styles[m]["color"] for m in ref_here})
            drawn = set(shown) | set(ref_here)
            for col, (x_index, title, xlabel) in enumerate((
                    (0, "training loss (EMA) vs step", "step"),
                    (3, "training loss (EMA) vs CPU seconds", "CPU s"),
                    (None, "step size / learning rate (seed 0)", "step"))):
                ax = axes[row][col]
                data_y, data_x = {}, {}
                for m in rest + shown + ref_here:
                    st = styles[m] if m in drawn else {"color": GREY, "ls": "-", "lw": 0.8, "zorder": 1}
                    if x_index is None:
                        c = seed0.get(m)
                        if not c:
                            continue
                        xs, ys = [pt[0] for pt in c], [pt[2] for pt in c]
                    else:
                        xs, ys, lo, hi = _median_curve(curves[m], x_index)
                        if not xs:
                            continue
                        if m in ref_here and len(curves[m]) > 1:
                            ax.fill_between(xs, lo, hi, color=st["color"], alpha=0.12, lw=0, zorder=1)
                    ax.plot(xs, ys, color=st["color"], ls=st["ls"], lw=st["lw"], zorder=st["zorder"],
                            label=m if m in drawn else "_nolegend_")
                    data_y[m], data_x[m] = ys, xs
                ax.set_yscale("log")
                if x_index is None:  # step sizes: the bulk, the references always whole
                    lo, hi, clipped = _bulk(data_y, log=True, always=ref_here)
                    note = _clip_note(clipped, drawn)
                else:  # losses: the range fits the run after its first 10% (the early drop is clipped)
                    late = {}
                    for m, ys in data_y.items():
                        xs = data_x[m]
                        x0 = xs[0] + 0.1 * (xs[-1] - xs[0])
                        late[m] = [y for x, y in zip(xs, ys) if x >= x0]
                    lo, hi, clipped = _bulk(late, log=True, always=ref_here)
                    lows = [min(y for y in v if y > 0) for m, v in data_y.items()
                            if m in drawn and any(y > 0 for y in v)]
                    if lo is not None and lows:
                        lo = min(lo, min(lows) * 0.95)  # never hide the good end of a coloured line
                        clipped = [m for m in clipped if any(y > 0 and (y < lo or y > hi) for y in late[m])]
                    early = any(max(v) > (hi or math.inf) for v in data_y.values() if v)
                    note = ("\n(y fits the run after its first 10%" + (
                        ", " + _clip_note(clipped, drawn).strip()[1:-1] if clipped else "") + ")") if early or clipped else ""
                if lo is not None and hi > lo:
                    ax.set_ylim(lo, hi)
                    _plain_log_labels(ax, lo, hi)
                if x_index == 3 and data_x:
                    ends = {m: [max(x)] for m, x in data_x.items() if x}
                    _, xhi, xclip = _bulk({m: [0.0] + e for m, e in ends.items()}, log=False, always=ref_here)
                    if xhi and xclip:
                        ax.set_xlim(0, xhi)
                        note += f"\n(x clipped at {xhi:.3g} s: {len(xclip)} slower)"
                head = f"{p} — {FAMILY_TITLES[fam]}: " if col == 0 else ""
                ax.set_title(head + title + note, fontsize=9)
                ax.set_xlabel(xlabel, fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
            handles = [_line_handle(_ref_label(m, recommended), styles[m]) for m in ref_here]
            handles += [_line_handle(m, styles[m]) for m in shown]
            if rest:
                handles.append(_line_handle(f"{len(rest)} other {FAMILY_TITLES[fam]} (grey)",
                                            {"color": GREY, "lw": 0.8}))
            _legend(axes[row][2], handles)
        out.append((f"curves_{p}.png", fig,
                    f"{p}: one row per family against the recommended method (blue, bold) and tuned "
                    f"Adam-cosine (black, bold); the best {TOP_K} of each family by final train loss in colour, "
                    f"the rest grey; loss vs steps, vs CPU seconds, and the step size."))
        tune = [r for r in _ok(results["tuning_runs"]) if r["problem"] == p]
        if tune:
            fig = _figure((12, 5))
            ax = fig.subplots()
            handles, ys_all = [], {}
            for m in sorted({r["method"] for r in tune}):
                pts = sorted((r["lr"], r["val_loss"] if not r["diverged"] else math.nan)
                             for r in tune if r["method"] == m)
                st = styles.get(m) or method_styles([m], None)[m]
                ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", color=st["color"], ls=st["ls"],
                        lw=max(st["lw"], 1.8), label=f"{m}: grid on the tuning seed")
                handles.append(_line_handle(f"{_ref_label(m, recommended)}: grid (tuning seed)", st))
                ys_all[m] = [b for _, b in pts]
            autos = [m for m in present if _kind(m) != "tuned"]
            val = {m: [r["val_loss"] for r in runs if r["problem"] == p and r["method"] == m
                       and math.isfinite(r["val_loss"])] for m in autos}
            val = {m: v for m, v in val.items() if v}
            vscore = {m: statistics.median(v) for m, v in val.items()}
            ref_auto = [m for m in (recommended,) if m in val]
            shown, rest = _pick([m for m in val if m not in ref_auto], vscore, styles, TOP_K,
                                {styles[m]["color"] for m in ref_auto} | {styles[m]["color"] for m in ys_all
                                                                          if m in styles})
            for m in rest:
                ax.axhline(vscore[m], color=GREY, lw=0.8, zorder=1)
            for m in ref_auto + shown:
                st = styles[m]
                if m in ref_auto:
                    ax.axhspan(min(val[m]), max(val[m]), color=st["color"], alpha=0.10, lw=0)
                ax.axhline(vscore[m], color=st["color"], ls=st["ls"], lw=st["lw"], zorder=st["zorder"], label=m)
                handles.append(_line_handle(f"{_ref_label(m, recommended)}: median over seeds", st))
            if rest:
                handles.append(_line_handle(f"{len(rest)} other untuned methods (grey)", {"color": GREY, "lw": 0.8}))
            ys_all.update({m: [vscore[m]] for m in vscore})
            lo, hi, clipped = _bulk(ys_all, log=True, always=set(shown) | set(ref_auto) | set(
                m for m in ys_all if m in refs))
            if lo is not None and hi > lo:
                ax.set_ylim(lo, hi)
                _plain_log_labels(ax, lo, hi)
            ax.set(xscale="log", yscale="log", xlabel="peak learning rate", ylabel="validation loss")
            ax.set_title(f"{p}: validation loss of the tuned baselines' grids vs the untuned methods"
                         + _clip_note(clipped, set(shown) | set(ref_auto) | set(ys_all)), fontsize=10)
            ax.grid(alpha=0.3)
            _legend(ax, handles)
            out.append((f"lr_sensitivity_{p}.png", fig,
                        f"{p}: each tuned baseline's validation loss over its learning-rate grid (markers) "
                        f"against the best {TOP_K} untuned methods' median (horizontal lines; rest grey)."))
    # performance profile of CPU time to target
    inst = defaultdict(dict)
    for (p, m), t in s["table"].items():
        for i, v in enumerate(t["seconds_to_target"]):
            inst[(p, i)][m] = v
    if inst:
        fig = _figure((12, 5))
        ax = fig.subplots()
        taus = [10 ** (k / 20) for k in range(0, 41)]
        prof = {}
        for m in s["methods"]:
            ratios = []
            for d in inst.values():
                if m not in d:
                    continue
                best = min(d.values())
                ratios.append(d[m] / best if math.isfinite(d[m]) and best > 0 else math.inf)
            if ratios:
                prof[m] = [sum(r <= t for r in ratios) / len(ratios) for t in taus]
        ref_here = [m for m in refs if m in prof]
        # area under the profile: higher is better, so score is its negative
        score = {m: -sum(v) for m, v in prof.items()}
        shown, rest = _pick([m for m in prof if m not in ref_here], score, styles, 8,
                            {styles[m]["color"] for m in ref_here})
        for m in rest:
            ax.step(taus, prof[m], where="post", color=GREY, lw=0.8, zorder=1)
        handles = []
        for m in ref_here + shown:
            st = styles[m]
            ax.step(taus, prof[m], where="post", color=st["color"], ls=st["ls"], lw=st["lw"], zorder=st["zorder"],
                    label=m)
            handles.append(_line_handle(_ref_label(m, recommended), st))
        if rest:
            handles.append(_line_handle(f"{len(rest)} others (grey)", {"color": GREY, "lw": 0.8}))
        ax.set(xscale="log", xlabel="τ (CPU time to target ÷ best)", ylabel="fraction of problems × seeds",
               ylim=(0, 1.02))
        ax.set_title("performance profile: CPU time to reach Adam's final loss (higher and further left is better)",
                     fontsize=10)
        ax.grid(alpha=0.3)
        _legend(ax, handles)
        out.append(("performance_profile.png", fig,
                    "Share of (problem, seed) pairs where each method reaches Adam's final loss within τ× the "
                    "fastest method's CPU time; the top 8 by area in colour, the rest grey."))
    oh = results.get("overhead")
    rows = []
    if oh:
        rows = [(r["method"], r["ratio"]) for r in oh["rows"] if math.isfinite(r["ratio"])]
        source = f"controlled, one process, {oh['problem']}"
    if not rows:
        rows = [(m, statistics.median([s["table"][(p, m)]["cpu_ratio"] for p in s["problems"]
                                       if (p, m) in s["table"] and math.isfinite(s["table"][(p, m)]["cpu_ratio"])]
                                      or [math.nan])) for m in s["methods"]]
        rows = [r for r in rows if math.isfinite(r[1])]
        source = "per-run timings, median over problems"
    if rows:
        rows.sort(key=lambda r: r[1])
        fig = _figure((12, max(3.0, 0.3 * len(rows) + 1.2)))
        ax = fig.subplots()
        names = [m for m, _ in rows]
        vals = [v for _, v in rows]
        med = statistics.median(vals)
        hi = max([v for v in vals if v <= 3 * med] + [1.2])  # bars beyond 3× the median are clipped
        colors = [styles[m]["color"] if m in styles else GREY for m in names]
        ax.barh([f"{m} ({_family(m)})" for m in names], [min(v, hi) for v in vals], color=colors,
                edgecolor=["k" if m in refs else "none" for m in names])
        for i, (m, v) in enumerate(rows):
            ax.text(min(v, hi) + hi * 0.01, i, f"{v:.2f}" + (" (clipped)" if v > hi else ""), va="center",
                    fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlim(0, hi * 1.15)
        ax.set(xlabel="CPU time per step ÷ Adam")
        ax.set_title(f"overhead per step ({source}); bars in each method's colour", fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
        out.append(("overhead.png", fig,
                    f"CPU time per step relative to Adam ({source}), each bar in its method's colour, family in "
                    f"brackets, references outlined; bars beyond 3× the median are clipped and labelled."))
    return out


def _save_figures(results: dict, s: dict, out_dir: str, recommended: Optional[str]) -> list:
    """Render :func:`figures` to PNGs; returns [(path, caption)] (empty without matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    saved = []
    for name, fig, caption in figures(results, s, recommended):
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=100)
        saved.append((path, caption))
    return saved
