"""The report's figures: loss curves and LR sensitivity per problem, the performance profile, overhead."""

from __future__ import annotations

import math
import os
import statistics
from typing import Optional

from collections import defaultdict

from .common import BASELINE, family_of, kind_of, ok_runs
from .styles import (FAMILY_TITLES, GREY, TOP_K, bulk_limits, clip_note, legend_beside, line_handle, median_curve,
                     method_styles, new_figure, pick_shown, plain_log_labels, ref_label)

__all__ = ["figures", "save_figures"]


def figures(results: dict, s: dict, recommended: Optional[str] = None) -> list:
    """Every figure of the report as ``(file name, Figure, one-line caption)``.  Needs matplotlib."""
    runs = ok_runs(results["runs"])
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
                if any(family_of(m) == f and m not in ref_here for m in present)] or ["autostep"]
        fig = new_figure((16, 3.4 * len(fams) + 0.6))
        axes = fig.subplots(len(fams), 3, squeeze=False)
        curves = {m: [r["curve"] for r in runs if r["problem"] == p and r["method"] == m and not r["diverged"]]
                  for m in present}
        seed0 = {}
        for m in present:
            rs = sorted((r for r in runs if r["problem"] == p and r["method"] == m), key=lambda r: r["seed"])
            if rs and rs[0]["curve"]:
                seed0[m] = rs[0]["curve"]
        for row, fam in enumerate(fams):
            members = [m for m in present if family_of(m) == fam and m not in ref_here]
            shown, rest = pick_shown(members, score, styles, TOP_K, {styles[m]["color"] for m in ref_here})
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
                        xs, ys, lo, hi = median_curve(curves[m], x_index)
                        if not xs:
                            continue
                        if m in ref_here and len(curves[m]) > 1:
                            ax.fill_between(xs, lo, hi, color=st["color"], alpha=0.12, lw=0, zorder=1)
                    ax.plot(xs, ys, color=st["color"], ls=st["ls"], lw=st["lw"], zorder=st["zorder"],
                            label=m if m in drawn else "_nolegend_")
                    data_y[m], data_x[m] = ys, xs
                ax.set_yscale("log")
                if x_index is None:  # step sizes: the bulk, the references always whole
                    lo, hi, clipped = bulk_limits(data_y, log=True, always=ref_here)
                    note = clip_note(clipped, drawn)
                else:  # losses: the range fits the run after its first 10% (the early drop is clipped)
                    late = {}
                    for m, ys in data_y.items():
                        xs = data_x[m]
                        x0 = xs[0] + 0.1 * (xs[-1] - xs[0])
                        late[m] = [y for x, y in zip(xs, ys) if x >= x0]
                    lo, hi, clipped = bulk_limits(late, log=True, always=ref_here)
                    lows = [min(y for y in v if y > 0) for m, v in data_y.items()
                            if m in drawn and any(y > 0 for y in v)]
                    if lo is not None and lows:
                        lo = min(lo, min(lows) * 0.95)  # never hide the good end of a coloured line
                        clipped = [m for m in clipped if any(y > 0 and (y < lo or y > hi) for y in late[m])]
                    early = any(max(v) > (hi or math.inf) for v in data_y.values() if v)
                    note = ("\n(y fits the run after its first 10%" + (
                        ", " + clip_note(clipped, drawn).strip()[1:-1] if clipped else "") + ")") if early or clipped else ""
                if lo is not None and hi > lo:
                    ax.set_ylim(lo, hi)
                    plain_log_labels(ax, lo, hi)
                if x_index == 3 and data_x:
                    ends = {m: [max(x)] for m, x in data_x.items() if x}
                    _, xhi, xclip = bulk_limits({m: [0.0] + e for m, e in ends.items()}, log=False, always=ref_here)
                    if xhi and xclip:
                        ax.set_xlim(0, xhi)
                        note += f"\n(x clipped at {xhi:.3g} s: {len(xclip)} slower)"
                head = f"{p} — {FAMILY_TITLES[fam]}: " if col == 0 else ""
                ax.set_title(head + title + note, fontsize=9)
                ax.set_xlabel(xlabel, fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
            handles = [line_handle(ref_label(m, recommended), styles[m]) for m in ref_here]
            handles += [line_handle(m, styles[m]) for m in shown]
            if rest:
                handles.append(line_handle(f"{len(rest)} other {FAMILY_TITLES[fam]} (grey)",
                                            {"color": GREY, "lw": 0.8}))
            legend_beside(axes[row][2], handles)
        out.append((f"curves_{p}.png", fig,
                    f"{p}: one row per family against the recommended method (blue, bold) and tuned "
                    f"Adam-cosine (black, bold); the best {TOP_K} of each family by final train loss in colour, "
                    f"the rest grey; loss vs steps, vs CPU seconds, and the step size."))
        tune = [r for r in ok_runs(results["tuning_runs"]) if r["problem"] == p]
        if tune:
            fig = new_figure((12, 5))
            ax = fig.subplots()
            handles, ys_all = [], {}
            for m in sorted({r["method"] for r in tune}):
                pts = sorted((r["lr"], r["val_loss"] if not r["diverged"] else math.nan)
                             for r in tune if r["method"] == m)
                st = styles.get(m) or method_styles([m], None)[m]
                ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", color=st["color"], ls=st["ls"],
                        lw=max(st["lw"], 1.8), label=f"{m}: grid on the tuning seed")
                handles.append(line_handle(f"{ref_label(m, recommended)}: grid (tuning seed)", st))
                ys_all[m] = [b for _, b in pts]
            autos = [m for m in present if kind_of(m) != "tuned"]
            val = {m: [r["val_loss"] for r in runs if r["problem"] == p and r["method"] == m
                       and math.isfinite(r["val_loss"])] for m in autos}
            val = {m: v for m, v in val.items() if v}
            vscore = {m: statistics.median(v) for m, v in val.items()}
            ref_auto = [m for m in (recommended,) if m in val]
            shown, rest = pick_shown([m for m in val if m not in ref_auto], vscore, styles, TOP_K,
                                {styles[m]["color"] for m in ref_auto} | {styles[m]["color"] for m in ys_all
                                                                          if m in styles})
            for m in rest:
                ax.axhline(vscore[m], color=GREY, lw=0.8, zorder=1)
            for m in ref_auto + shown:
                st = styles[m]
                if m in ref_auto:
                    ax.axhspan(min(val[m]), max(val[m]), color=st["color"], alpha=0.10, lw=0)
                ax.axhline(vscore[m], color=st["color"], ls=st["ls"], lw=st["lw"], zorder=st["zorder"], label=m)
                handles.append(line_handle(f"{ref_label(m, recommended)}: median over seeds", st))
            if rest:
                handles.append(line_handle(f"{len(rest)} other untuned methods (grey)", {"color": GREY, "lw": 0.8}))
            ys_all.update({m: [vscore[m]] for m in vscore})
            lo, hi, clipped = bulk_limits(ys_all, log=True, always=set(shown) | set(ref_auto) | set(
                m for m in ys_all if m in refs))
            if lo is not None and hi > lo:
                ax.set_ylim(lo, hi)
                plain_log_labels(ax, lo, hi)
            ax.set(xscale="log", yscale="log", xlabel="peak learning rate", ylabel="validation loss")
            ax.set_title(f"{p}: validation loss of the tuned baselines' grids vs the untuned methods"
                         + clip_note(clipped, set(shown) | set(ref_auto) | set(ys_all)), fontsize=10)
            ax.grid(alpha=0.3)
            legend_beside(ax, handles)
            out.append((f"lr_sensitivity_{p}.png", fig,
                        f"{p}: each tuned baseline's validation loss over its learning-rate grid (markers) "
                        f"against the best {TOP_K} untuned methods' median (horizontal lines; rest grey)."))
    # performance profile of CPU time to target
    inst = defaultdict(dict)
    for (p, m), t in s["table"].items():
        for i, v in enumerate(t["seconds_to_target"]):
            inst[(p, i)][m] = v
    if inst:
        fig = new_figure((12, 5))
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
        shown, rest = pick_shown([m for m in prof if m not in ref_here], score, styles, 8,
                            {styles[m]["color"] for m in ref_here})
        for m in rest:
            ax.step(taus, prof[m], where="post", color=GREY, lw=0.8, zorder=1)
        handles = []
        for m in ref_here + shown:
            st = styles[m]
            ax.step(taus, prof[m], where="post", color=st["color"], ls=st["ls"], lw=st["lw"], zorder=st["zorder"],
                    label=m)
            handles.append(line_handle(ref_label(m, recommended), st))
        if rest:
            handles.append(line_handle(f"{len(rest)} others (grey)", {"color": GREY, "lw": 0.8}))
        ax.set(xscale="log", xlabel="τ (CPU time to target ÷ best)", ylabel="fraction of problems × seeds",
               ylim=(0, 1.02))
        ax.set_title("performance profile: CPU time to reach Adam's final loss (higher and further left is better)",
                     fontsize=10)
        ax.grid(alpha=0.3)
        legend_beside(ax, handles)
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
        fig = new_figure((12, max(3.0, 0.3 * len(rows) + 1.2)))
        ax = fig.subplots()
        names = [m for m, _ in rows]
        vals = [v for _, v in rows]
        med = statistics.median(vals)
        hi = max([v for v in vals if v <= 3 * med] + [1.2])  # bars beyond 3× the median are clipped
        colors = [styles[m]["color"] if m in styles else GREY for m in names]
        ax.barh([f"{m} ({family_of(m)})" for m in names], [min(v, hi) for v in vals], color=colors,
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


def save_figures(results: dict, s: dict, out_dir: str, recommended: Optional[str]) -> list:
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
