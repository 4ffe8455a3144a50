"""``report.md``: the summary table, the controlled overhead, per-problem tables, tuning, plots, notes."""

from __future__ import annotations

import math
import os
import statistics
from typing import Optional

from .common import BASELINE, family_of, fmt, ok_runs
from .plots import save_figures
from .summary import headline, overhead_ratios, summarize, summary_rows

__all__ = ["write_report"]


def _med_range(values, never: str = "diverged") -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    finite = [v for v in vals if math.isfinite(v)]
    if not finite:
        return never
    med = statistics.median(sorted(vals, key=lambda v: v if math.isfinite(v) else math.inf))
    return f"{fmt(med)} [{fmt(min(finite))}, {fmt(max(finite))}]"


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
    interval = "" if math.isnan(c["lo"]) else f" [{fmt(c['lo'], 3)}, {fmt(c['hi'], 3)}]"
    return f"{c['ratio']:.3g}{interval} {c['verdict']}"


def write_report(results: dict, out_dir: str) -> str:
    """Write ``report.md`` and the figures into ``out_dir``; returns the report's path."""
    s = summarize(results)
    sentence, rec = headline(results, s)
    overhead = overhead_ratios(results)
    figs = save_figures(results, s, out_dir, rec)
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
    for row in summary_rows(s, overhead):
        m = row["method"]
        name = f"**{m}**" if m in (rec, BASELINE) else m
        if m == BASELINE:
            wtl, ratio = "baseline", "1"
        elif not s["has_baseline"]:
            wtl, ratio = "–", "–"
        else:
            wtl = f"{row['wins']}/{row['ties']}/{row['losses']}" + (f" ({row['undecided']} n/a)" if row["undecided"] else "")
            ratio = "–" if math.isnan(row["ratio"]) else f"{fmt(row['ratio'], 3)} [{fmt(row['lo'], 3)}, {fmt(row['hi'], 3)}]"
        search = f" (search {row['search']:.0%})" if row["search"] > 0 else ""
        lines.append(f"| {name} | {family_of(m)} | {wtl} | {ratio} | {row['compute']:.2f}{search} | "
                     f"{fmt(row['cpu_controlled'], 3)} | {fmt(row['cpu_runs'], 3)} | {row['rank_train']:.2f} | "
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
            lines.append(f"| {r['method']} | {fmt(r['ratio'], 3)} | {fmt(r['ms_per_step'], 3)} | "
                         f"{fmt(r['forwards_per_step'], 3)} | {r['rounds']} | {r['note'] or ''} |")
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
                  f"({fmt(s['targets'][p])})."
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
                f"{_med_range(t['seconds_to_target'], 'not reached')} | {fmt(t['cpu_ratio'], 3)} | {t['fwd']:.2f} | "
                f"{t['bwd']:.2f} | {t['state']:.2f} | {_compute_cell(t, m)} | {t['diverged']}/{t['n']} |")
        lines.append("")
    lines += ["## Tuning", "",
              "Peak learning rates chosen on the tuning seed by validation loss (7-point half-decade "
              "grids; the grid runs are kept in `runs/` and drawn in the LR-sensitivity figures).", "",
              "| problem | method | chosen peak LR | grid runs |", "|---|---|---|---|"]
    for key, lr in results.get("chosen_lr", {}).items():
        p, m = key.split("|")
        n = sum(1 for r in results["tuning_runs"] if r["problem"] == p and r["method"] == m)
        lines.append(f"| {p} | {m} | {fmt(lr) if lr else 'none (all diverged)'} | {n} |")
    tune_steps = sum(r.get("steps", 0) for r in ok_runs(results["tuning_runs"]))
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
