"""The benchmark report: markdown tables, a summary rank table and PNG plots."""

from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from typing import Optional

__all__ = ["write_report", "time_to_target", "summarize", "SECTIONS"]

#: section titles every report contains (tests check them)
SECTIONS = ("## Summary", "## Per-problem results", "## Tuning", "## Plots", "## Notes")


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


def summarize(results: dict) -> dict:
    """Per problem and method: aggregated metrics; plus targets and ranks."""
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
    table = {}
    for p in problems:
        for m in methods:
            rs = by.get((p, m), [])
            if not rs:
                continue
            ttt = [time_to_target(r["curve"], targets[p]) if not r["diverged"] else (math.inf, math.inf)
                   for r in rs]
            ratios = [r["cpu_per_step"] / adam_cpu[(p, r["seed"])] for r in rs
                      if adam_cpu.get((p, r["seed"]))]
            table[(p, m)] = {
                "train_loss": [r["train_loss"] if not r["diverged"] else math.inf for r in rs],
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
    exact = {r["problem"]: r.get("optimum_exact", False) for r in runs}
    return {"table": table, "targets": targets, "ranks": ranks, "problems": problems, "methods": methods,
            "exact": exact}


def _summary_rows(s: dict) -> list:
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
        rows.append((m, statistics.mean(tr), statistics.mean(te), statistics.median(cpu) if cpu else math.nan,
                     div, len(tr)))
    rows.sort(key=lambda row: (row[1] + row[2]) / 2)
    return rows


def write_report(results: dict, out_dir: str) -> str:
    """Write ``report.md`` and the plots into ``out_dir``; returns the report's path."""
    s = summarize(results)
    plots = _plots(results, s, out_dir)
    lines = [f"# autostep bench — suite `{results['suite']}`", ""]
    device = results.get("device", "cpu")
    clock = "synchronised wall-clock seconds on the GPU" if device != "cpu" else "process CPU seconds"
    lines.append(f"Device: {device}; times are {clock}.")
    lines.append(f"Problems: {', '.join(f'{p} ({n} steps)' for p, n in results['plan'].items())}. "
                 f"Evaluation seeds {results['seeds']} (each fixes initialisation and data order for "
                 f"every method); tuning seed {results['tuning_seed']}. Wall time "
                 f"{results['wall_s']:.0f} s. Numbers are median [min, max] over seeds.")
    lines += ["", "## Summary", "",
              "Mean rank over problems (1 = best) by final train loss and by test metric; CPU time per "
              "step relative to Adam (median over problems); divergences over all runs.", "",
              "| method | rank: train loss | rank: test metric | CPU/step ÷ Adam | divergences | problems |",
              "|---|---|---|---|---|---|"]
    for m, tr, te, cpu, div, n in _summary_rows(s):
        lines.append(f"| {m} | {tr:.2f} | {te:.2f} | {_fmt(cpu, 3)} | {div} | {n} |")
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
                     if s["exact"].get(p) else ""), "",
                  f"| method | train loss | test {metric} | mean log loss | steps to target | CPU s to target "
                  f"| CPU/step ÷ Adam | fwd/step | bwd/step | state ÷ params | diverged |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in present:
            t = s["table"][(p, m)]
            lines.append(
                f"| {m} | {_med_range(t['train_loss'])} | {_med_range(t['test_metric'])} | "
                f"{_med_range(t['mean_log_loss'])} | {_med_range(t['steps_to_target'], 'not reached')} | "
                f"{_med_range(t['seconds_to_target'], 'not reached')} | {_fmt(t['cpu_ratio'], 3)} | {t['fwd']:.2f} | "
                f"{t['bwd']:.2f} | {t['state']:.2f} | {t['diverged']}/{t['n']} |")
        lines.append("")
    lines += ["## Tuning", "",
              "Peak learning rates chosen on the tuning seed by validation loss (7-point half-decade "
              "grids; the grid runs are kept in `runs/` and drawn in the LR-sensitivity plots).", "",
              "| problem | method | chosen peak LR | grid runs |", "|---|---|---|---|"]
    for key, lr in results.get("chosen_lr", {}).items():
        p, m = key.split("|")
        n = sum(1 for r in results["tuning_runs"] if r["problem"] == p and r["method"] == m)
        lines.append(f"| {p} | {m} | {_fmt(lr) if lr else 'none (all diverged)'} | {n} |")
    tune_steps = sum(r.get("steps", 0) for r in _ok(results["tuning_runs"]))
    lines += ["", f"Tuning cost: {len(results['tuning_runs'])} runs, {tune_steps} training steps.", ""]
    lines += ["## Plots", ""]
    if plots:
        lines += [f"![{os.path.basename(x)}]({os.path.basename(x)})" for x in plots]
    else:
        lines.append("(matplotlib is not installed: `pip install 'autostep[plot]'` for the plots)")
    lines += ["", "## Notes", ""]
    notes = list(results.get("notes", []))
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


# ---------------------------------------------------------------------------------- plots
def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def _style(i: int, plt) -> dict:
    """A distinct (colour, line style) per method index, consistent across panels."""
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {"color": colors[i % len(colors)], "ls": ("-", "--", ":", "-.")[(i // len(colors)) % 4]}


def _band(ax, curves, x_index, label, log_y=True, style=None):
    """Median line with a min-max band over seeds, curves resampled on the first curve's x."""
    curves = [c for c in curves if c]
    if not curves:
        return
    n = min(len(c) for c in curves)
    xs = [statistics.median(c[i][x_index] for c in curves) for i in range(n)]
    ys = [[c[i][1] for c in curves] for i in range(n)]
    med = [statistics.median(v) for v in ys]
    lo = [min(v) for v in ys]
    hi = [max(v) for v in ys]
    line, = ax.plot(xs, med, label=label, lw=1.3, **(style or {}))
    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    if log_y:
        ax.set_yscale("log")


def _plots(results: dict, s: dict, out_dir: str) -> list:
    plt = _plt()
    if plt is None:
        return []
    runs = _ok(results["runs"])
    out = []
    for p in s["problems"]:
        present = [m for m in s["methods"] if (p, m) in s["table"]]
        if not present:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(19, 4.8))
        for i, m in enumerate(present):
            st = _style(i, plt)
            cs = [r["curve"] for r in runs if r["problem"] == p and r["method"] == m and not r["diverged"]]
            _band(axes[0], cs, 0, m, style=st)
            _band(axes[1], cs, 3, m, style=st)
            ref = [r for r in runs if r["problem"] == p and r["method"] == m]
            if ref and ref[0]["curve"]:
                c = ref[0]["curve"]
                axes[2].plot([x[0] for x in c], [x[2] for x in c], label=m, lw=1.1, **st)
        axes[0].set(title=f"{p}: training loss (EMA) vs steps", xlabel="step")
        axes[1].set(title="vs CPU seconds", xlabel="CPU s")
        axes[2].set(title="step size / learning rate (seed 0)", xlabel="step", yscale="log")
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[2].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        path = os.path.join(out_dir, f"curves_{p}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
        tune = [r for r in _ok(results["tuning_runs"]) if r["problem"] == p]
        if tune:
            fig, ax = plt.subplots(figsize=(11, 5))
            for m in sorted({r["method"] for r in tune}):
                pts = sorted((r["lr"], r["val_loss"] if not r["diverged"] else math.nan)
                             for r in tune if r["method"] == m)
                ax.plot([a for a, _ in pts], [b for _, b in pts], "o-", lw=2.2, color="k" if "Adam" in m else "0.45",
                        label=f"{m}: grid on the tuning seed")
            colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
            autos = [m for m in present if _kind(m) != "tuned" and m != "Adam"]
            for i, m in enumerate(autos):
                vals = [r["val_loss"] for r in runs if r["problem"] == p and r["method"] == m
                        and math.isfinite(r["val_loss"])]
                if not vals:
                    continue
                c = colors[i % len(colors)]
                ls = ("-", "--", ":", "-.")[(i // len(colors)) % 4]
                ax.axhspan(min(vals), max(vals), color=c, alpha=0.08, lw=0)
                ax.axhline(statistics.median(vals), color=c, ls=ls, lw=1.0, label=f"{m} (median, band: seeds)")
            ax.set(xscale="log", yscale="log", xlabel="peak learning rate", ylabel="validation loss",
                   title=f"{p}: LR sensitivity of the tuned baselines vs the automatic methods")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
            fig.tight_layout()
            path = os.path.join(out_dir, f"lr_sensitivity_{p}.png")
            fig.savefig(path, dpi=90)
            plt.close(fig)
            out.append(path)
    # performance profile of CPU time to target
    inst = defaultdict(dict)
    for (p, m), t in s["table"].items():
        for i, v in enumerate(t["seconds_to_target"]):
            inst[(p, i)][m] = v
    if inst:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        taus = [10 ** (k / 20) for k in range(0, 41)]
        for m in s["methods"]:
            ratios = []
            for d in inst.values():
                if m not in d:
                    continue
                best = min(d.values())
                ratios.append(d[m] / best if math.isfinite(d[m]) and best > 0 else math.inf)
            if ratios:
                ax.step(taus, [sum(r <= t for r in ratios) / len(ratios) for t in taus], where="post", label=m)
        ax.set(xscale="log", xlabel="τ (CPU time to target ÷ best)", ylabel="fraction of problems × seeds",
               title="performance profile: time to Adam's final loss", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, "performance_profile.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        rows = [(m, statistics.median([s["table"][(p, m)]["cpu_ratio"] for p in s["problems"]
                                       if (p, m) in s["table"] and math.isfinite(s["table"][(p, m)]["cpu_ratio"])] or [math.nan]))
                for m in s["methods"]]
        ax.barh([m for m, _ in rows], [v for _, v in rows])
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set(xlabel="CPU time per step ÷ Adam (median over problems)", title="overhead")
        fig.tight_layout()
        path = os.path.join(out_dir, "overhead.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    return out


def _kind(name: str) -> Optional[str]:
    from .. import registry
    spec = registry.REGISTRY.get(name)
    return spec.kind if spec else None
