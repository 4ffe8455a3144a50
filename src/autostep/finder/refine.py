"""The adaptive evaluation of section 3.3: a half-decade grid, extended and refined where needed.

:func:`search_curve` evaluates any ``evaluate(lrs) -> [per-seed losses]`` on a coarse half-decade
grid, extends it when the minimum lands on an edge (or the small-lr end is not yet on the plateau),
then refines at the log-midpoints around each point of interest until each is known within ``tol``
decades (``lr-step-sampling-search.txt``).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from .. import _validate as V
from .curve import analyze
from .peak import BudgetExhausted

__all__ = ["search_curve", "DEFAULT_LR_RANGE"]

#: the coarse grid's default span (extended automatically when the curve needs it)
DEFAULT_LR_RANGE = (1e-5, 1.0)
_GRID = 0.5  # half a decade, as in the paper


def _key(x: float) -> float:
    return round(x, 9)


def _refine(run, mean_curve, points, info, lo, hi, tol, smooth_decades, max_rounds, max_extend, plateau,
            width, patience) -> None:
    """The coarse grid and the refinement rounds of :func:`search_curve` (fills ``points``)."""
    lx, hx = math.log10(lo), math.log10(hi)
    n = int(math.floor((hx - lx) / _GRID + 1e-9))
    grid = [lx + _GRID * i for i in range(n + 1)]
    if hx - grid[-1] > 1e-9:
        grid.append(hx)
    run_of_div = 0
    for start in range(0, len(grid), max(1, width)):
        chunk = grid[start:start + max(1, width)]
        run(chunk)
        for x in chunk:
            div = all(not math.isfinite(v) for v in points[_key(x)])
            run_of_div = run_of_div + 1 if div else 0
        if run_of_div >= patience:
            info["skipped"] = len(grid) - start - len(chunk)
            break

    xs, ys = mean_curve()
    analysis = analyze([10.0 ** x for x in xs], ys, smooth_decades)
    left_bound, right_bound = lx - _GRID * max_extend, hx + _GRID * max_extend
    for _ in range(max_rounds):
        new = []
        xs = analysis.x
        y = analysis.y
        last_div = not math.isfinite(ys[-1])
        if analysis.i_min == len(xs) - 1 and not last_div and xs[-1] + _GRID <= right_bound + 1e-9:
            new.append(xs[-1] + _GRID)
            info["extended_right"] += 1
        if len(xs) >= 2 and xs[0] - _GRID >= left_bound - 1e-9:
            drop = y[0] - min(y)
            if analysis.i_min == 0 or (y[0] - y[1]) > plateau * drop:
                new.append(xs[0] - _GRID)
                info["extended_left"] += 1
        for name, (px, is_point) in analysis.points_of_interest().items():
            left = [x for x in xs if x < px - 1e-9]
            right = [x for x in xs if x > px + 1e-9]
            if is_point:
                if left and px - left[-1] > tol + 1e-9:
                    new.append((px + left[-1]) / 2)
                if right and right[0] - px > tol + 1e-9:
                    new.append((px + right[0]) / 2)
            elif left and right and right[0] - left[-1] > tol + 1e-9:
                new.append((left[-1] + right[0]) / 2)
        new = sorted({_key(x) for x in new} - set(points))
        if not new:
            break
        info["rounds"] += 1
        run(new)
        xs_, ys = mean_curve()
        analysis = analyze([10.0 ** x for x in xs_], ys, smooth_decades)
    else:
        info["notes"].append(f"stopped after max_rounds={max_rounds} rounds of refinement")


def search_curve(evaluate: Callable[[list], list], lr_range=DEFAULT_LR_RANGE, *, tol: float = 0.125,
                 smooth_decades: float = 0.15, max_rounds: int = 10, max_extend: int = 6,
                 plateau: float = 0.05, width: int = 1, patience: int = 2,
                 smooth: Optional[float] = None) -> tuple:
    """The adaptive evaluation of section 3.3 over any ``evaluate(lrs) -> [per-seed losses]``.

    1. A coarse grid at half-decade spacing over ``lr_range``, evaluated from small to large rates in
       chunks of ``width``; once ``patience`` consecutive rates have diverged (all losses infinite)
       the larger rates are skipped.
    2. Rounds of: analyse the mean curve; extend by half a decade to the right when the minimum is the
       largest rate, to the left when the minimum is the smallest rate or the small-lr end is not yet
       flat (its first step down exceeds ``plateau`` of the total drop), at most ``max_extend`` points
       per side; add the log-midpoint between each point of interest (``max_lr``, ``min_lr``,
       ``half_drop``, ``steepest``) and each neighbour farther than ``tol`` decades (the bracketing
       pair for the interpolated ``half_drop``).  Stop when nothing is added or after ``max_rounds``.

    ``smooth_decades`` is the curve's bandwidth (:func:`~autostep.finder.curve.analyze`;
    ``smooth=`` is its old, deprecated name).

    Returns ``(points, analysis, info)``: ``points`` maps log10(lr) to the tuple of per-seed losses,
    ``analysis`` is the :class:`~autostep.finder.curve.CurveAnalysis` of the mean curve.
    """
    smooth_decades = V.renamed_keyword("search_curve", "smooth", smooth, "smooth_decades",
                                       smooth_decades, 0.15)
    lo, hi = V.increasing_pair("lr_range", lr_range)
    tol = V.positive("tol", tol, " (decades within which each point of interest is known)")
    V.positive_int("max_rounds", max_rounds, 0)
    V.positive_int("max_extend", max_extend, 0)
    points: dict = {}
    info = {"rounds": 0, "extended_left": 0, "extended_right": 0, "skipped": 0, "notes": []}

    def run(xs: list) -> None:
        xs = [x for x in xs if _key(x) not in points]
        if xs:
            try:
                results = evaluate([10.0 ** x for x in xs])
            except BudgetExhausted as exc:  # keep what was measured before the budget ran out
                results = exc.partial
                for x, losses in zip(xs, results):
                    points[_key(x)] = tuple(float(v) for v in losses)
                raise
            for x, losses in zip(xs, results):
                points[_key(x)] = tuple(float(v) for v in losses)

    def mean_curve():
        xs = sorted(points)
        ys = []
        for x in xs:
            v = points[x]
            ys.append(math.inf if any(not math.isfinite(u) for u in v) else sum(v) / len(v))
        return xs, ys

    try:
        _refine(run, mean_curve, points, info, lo, hi, tol, smooth_decades, max_rounds, max_extend,
                plateau, width, patience)
    except BudgetExhausted:
        info["budget_exhausted"] = True
        info["notes"].append("the step budget ran out; the curve is read from the trials so far")
    if not points:
        raise ValueError("the step budget does not fit a single trial; raise budget=")
    xs, ys = mean_curve()
    analysis = analyze([10.0 ** x for x in xs], ys, smooth_decades)
    info["notes"].extend(analysis.notes)
    return points, analysis, info
