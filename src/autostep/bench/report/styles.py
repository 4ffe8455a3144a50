"""How the report's figures look: one style per method, axis limits that follow the bulk of the data,
legends beside the axes, and figures on their own Agg canvas (the user's pyplot backend is never
touched)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Optional

from .common import BASELINE, family_of

__all__ = ["method_styles", "GREY", "TOP_K"]

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
        fam = family_of(m)
        pal = PALETTES.get(fam, PALETTES["autostep"])
        i = counters[fam]
        counters[fam] += 1
        first = FAMILY_LS.get(fam, "-")
        alt = [first] + [x for x in ("-", "--", "-.", ":") if x != first]
        ls = alt[(i // len(pal)) % len(alt)]
        styles[m] = {"color": pal[i % len(pal)], "ls": ls, "lw": 1.6, "zorder": 3}
    return styles


def pick_shown(candidates: list, score: dict, styles: dict, k: int, taken: set) -> tuple[list, list]:
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


def bulk_limits(lines: dict, log: bool, always=()) -> tuple:
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


def plain_log_labels(ax, lo: float, hi: float) -> None:
    """On a log axis spanning under a decade, label ticks as plain numbers (2.1, not 2.1×10⁰)."""
    if lo > 0 and hi / lo < 10:
        from matplotlib import ticker
        fmt = ticker.FuncFormatter(lambda v, _pos: f"{v:.3g}")
        ax.yaxis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(fmt)


def clip_note(clipped: list, shown: set) -> str:
    named = [c for c in clipped if c in shown]
    others = len(clipped) - len(named)
    if not clipped:
        return ""
    parts = ", ".join(named[:3]) + (f" +{len(named) - 3}" if len(named) > 3 else "")
    if others:
        parts = (parts + ", " if parts else "") + f"{others} grey"
    return f"\n(clipped to the bulk: {parts})"


def new_figure(figsize):
    """A Figure on the Agg canvas (no global backend switch, safe inside any application)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def median_curve(curves: list, x_index: int) -> tuple:
    curves = [c for c in curves if c]
    if not curves:
        return [], [], [], []
    n = min(len(c) for c in curves)
    xs = [statistics.median(c[i][x_index] for c in curves) for i in range(n)]
    ys = [[c[i][1] for c in curves] for i in range(n)]
    return xs, [statistics.median(v) for v in ys], [min(v) for v in ys], [max(v) for v in ys]


def legend_beside(ax, handles, title=None):
    """A legend beside the axes (never over the data)."""
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  fontsize=8, title=title, title_fontsize=8, frameon=False)


def ref_label(m: str, recommended: Optional[str]) -> str:
    return m + (" (recommended)" if m == recommended else " (tuned baseline)" if m == BASELINE else "")


def line_handle(label, style):
    from matplotlib.lines import Line2D
    return Line2D([], [], label=label, color=style["color"], ls=style.get("ls", "-"), lw=style.get("lw", 1.5))
