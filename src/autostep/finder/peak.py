"""The peak rate for a schedule, found within a step budget by trials that run the schedule.

``find_lr(..., schedule="cosine", total_steps=T)`` answers "which peak rate should warm-up + cosine
(or linear decay to zero, or a constant rate) use?"  The paper's picks sit inside the viable window
of constant-rate trials; on the bench's problems they lie 5-30x below the best peak of a long
warm-up + cosine run (``benchmarks/finder_calibration.md``).  Two things cause that bias: a
constant-rate trial is charged for the noise a large rate leaves behind, which the schedule's decay
removes in a real run; and the picks aim at the middle of the window.

The rule (calibrated on the bench's real-data problems, see the calibration note):

1. Every trial runs the schedule itself, compressed into its ``k`` steps (:func:`trial_factor`:
   linear warm-up over ``max(1, k // 5)`` steps, then the schedule's decay), from the same reset
   state (:class:`~.search.TrialRunner`); ``y(lr)`` is its validation loss.  ``y0``, the loss of the
   untouched model, costs no training step.
2. Decades are scanned from the top of ``lr_range`` down (diverging trials stop after a step or
   two, so the top is cheap) until the loss stops improving as the rate falls.
3. The best rate is refined by bisection on the log axis until its neighbours are within ``tol``
   decades, and read off as the vertex of the parabola through it and its two neighbours.
4. ``peak = PEAK_SCALE[schedule] * best``: the remaining horizon bias (``k`` steps against ``T``).

``budget`` bounds the training steps of all trials together; the trial length is chosen so
that about :data:`TRIALS` trials fit (at least 2 steps, at most ``steps``), and a search that runs
out answers from the trials it has.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

__all__ = ["SCHEDULES", "PEAK_SCALE", "TRIALS", "trial_steps", "trial_factor", "peak_search"]

#: the schedules find_lr knows how to give a peak for
SCHEDULES = ("cosine", "linear", "constant")

#: peak / best rate of the schedule-shaped trials (benchmarks/finder_calibration.md)
PEAK_SCALE = {"cosine": 2.24, "linear": 2.24, "constant": 0.63}

#: trials the budget is divided into when it sets the trial length
TRIALS = 5


class BudgetExhausted(Exception):
    """Internal: the next trial would exceed the step budget; ``partial`` holds the results of
    the rates evaluated before it (in order)."""

    def __init__(self, partial=()) -> None:
        super().__init__("step budget exhausted")
        self.partial = list(partial)


def trial_steps(budget: Optional[int], steps: int, n_seeds: int = 1) -> int:
    """Steps per trial: ``steps``, shortened so that :data:`TRIALS` trials fit in the budget."""
    if budget is None:
        return steps
    return max(2, min(steps, budget // (TRIALS * n_seeds)))


def trial_factor(schedule: str, step: int, steps: int) -> float:
    """The rate multiplier at ``step`` of a ``steps``-step trial that mimics ``schedule``."""
    if schedule == "constant":
        return 1.0
    warmup = max(1, steps // 5)
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    return 1.0 - frac  # linear decay to zero


def _vertex(xs: list, ys: list, i: int) -> float:
    """log10 rate of the parabola vertex through points i-1, i, i+1 (clamped between them)."""
    if i == 0 or i == len(xs) - 1 or not all(math.isfinite(ys[j]) for j in (i - 1, i, i + 1)):
        return xs[i]
    (x0, x1, x2), (y0, y1, y2) = xs[i - 1:i + 2], ys[i - 1:i + 2]
    den = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den
    if not a > 0:
        return xs[i]
    return min(max(-b / (2 * a), (x0 + x1) / 2), (x1 + x2) / 2)


def peak_search(evaluate: Callable[[float], float], y0: float, lr_range: tuple, *,
                tol: float = 0.125, max_extend: int = 3) -> tuple:
    """Steps 2 and 3 of the module's rule: the best rate of the trials, refined.

    ``evaluate(lr) -> mean loss`` (``inf`` for a diverged trial) may raise :class:`BudgetExhausted`;
    the search then stops and answers from the points it has.  Returns ``(best, points, info)``:
    ``best`` is ``None`` when no trial converged; ``points`` maps log10(lr) to the loss.
    """
    lx, hx = math.log10(lr_range[0]), math.log10(lr_range[1])
    points: dict = {}
    info = {"notes": [], "budget_exhausted": False}

    def ev(x: float) -> float:
        x = round(x, 9)
        if x not in points:
            points[x] = float(evaluate(10.0 ** x))
        return points[x]

    def best_x():
        fin = {x: y for x, y in points.items() if math.isfinite(y)}
        return min(fin, key=lambda v: (fin[v], v)) if fin else None

    try:
        x, bottom = hx, lx - max_extend
        while x >= bottom - 1e-9:  # decades from the top down
            y = ev(x)
            above = points.get(round(x + 1.0, 9))
            if math.isfinite(y) and above is not None and math.isfinite(above) and y >= above:
                break
            b = best_x()
            if math.isfinite(y) and y >= y0 and b is not None and points[b] < y0:
                break  # back at the loss of learning nothing
            x -= 1.0
        top = hx
        for _ in range(max_extend):  # best at the top of the range: look above it
            b = best_x()
            if b is None or b < top - 1e-9:
                break
            top += 1.0
            ev(top)
            info["notes"].append(f"extended lr_range up to {10 ** top:.3g}")
        while True:  # bisect towards the best rate
            b = best_x()
            if b is None:
                break
            xs = sorted(points)
            i = xs.index(b)
            gaps = []
            if i > 0 and b - xs[i - 1] > tol + 1e-9:
                gaps.append((b - xs[i - 1], (b + xs[i - 1]) / 2))
            if i + 1 < len(xs) and xs[i + 1] - b > tol + 1e-9:
                gaps.append((xs[i + 1] - b, (b + xs[i + 1]) / 2))
            if not gaps:
                break
            ev(max(gaps)[1])  # the wider side first
    except BudgetExhausted:
        info["budget_exhausted"] = True
        info["notes"].append("the step budget ran out; the rate is read from the trials so far")
    b = best_x()
    if b is None:
        return None, points, info
    xs = sorted(points)
    ys = [points[x] for x in xs]
    i = xs.index(b)
    if points[b] >= y0:
        info["notes"].append("no trial improved on the initial loss; the rate is a guess: use "
                             "longer trials (steps=, budget=) or check the model")
    info.update(x_best=b, y_best=points[b], y0=y0)
    return 10.0 ** _vertex(xs, ys, i), points, info
