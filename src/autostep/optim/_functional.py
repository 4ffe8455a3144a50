"""Pure math of the Armijo family, on Python floats (unit-testable without torch plumbing).

Sign convention used throughout autostep: a step moves to ``w - eta * d`` where ``d`` is the
*descent* direction (``d = g`` for SGD, ``d = m_hat / (sqrt(v_hat) + eps)`` for Adam).  The
first-order decrease along it is ``eta * <g, d>``; for SGD ``<g, d> = ||g||^2``.
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = [
    "armijo_rhs",
    "armijo_holds",
    "c_h",
    "ema",
    "bias_corrected",
    "grow",
    "amortize_interval",
    "next_interval",
]


def c_h(c: float, f_a: float) -> float:
    """The switch of the ALSALS paper, eq. 8: ``c`` if ``f_a > 0`` else ``1 / c``."""
    return c if f_a > 0 else 1.0 / c


def armijo_rhs(cs: Sequence[float], etas: Sequence[float], ss: Sequence[float],
               momentum_aware: bool = False) -> float:
    """Sufficient decrease ``sum_j c_j * eta_j * s_j`` (eq. 1/5/7 of the ALSALS paper).

    With ``momentum_aware`` every ``c_j`` is replaced by :func:`c_h` of its ``s_j`` (eq. 9).
    """
    total = 0.0
    for c, eta, s in zip(cs, etas, ss):
        total += (c_h(c, s) if momentum_aware else c) * eta * s
    return total


def armijo_holds(decrease: float, rhs: float) -> bool:
    """``f(w) - f(w - eta d) >= rhs``; a NaN or -inf decrease (non-finite trial loss) never holds."""
    return math.isfinite(decrease) and decrease >= rhs


def ema(prev: float, new: float, beta: float) -> float:
    """Exponential moving average ``prev * beta + new * (1 - beta)`` (eq. 4 of the slides)."""
    return prev * beta + new * (1.0 - beta)


def bias_corrected(value: float, beta: float, count: int) -> float:
    """Adam-style bias correction of an EMA started at zero after ``count`` updates."""
    if count <= 0:
        return value
    return value / (1.0 - beta ** count)


def grow(eta: float, b: float, steps: int = 1) -> float:
    """Step-size growth ``eta * 2 ** (steps / b)`` (ALSALS paper eq. 2)."""
    return eta * 2.0 ** (steps / b)


def amortize_interval(drift: float, k_max: int) -> int:
    """How many steps the step size may be reused before the next search.

    ``drift`` is the relative drift of the step size (``|fast EMA - slow EMA|`` of ``log eta``).
    A drift of 10 % allows 10 steps, 50 % allows 2, anything above 100 % searches every step; the
    interval never exceeds ``k_max``.
    """
    if k_max <= 1 or not math.isfinite(drift):
        return 1
    return int(max(1, min(k_max, math.floor(1.0 / max(drift, 1e-12)))))


def next_interval(prev: int, trials: int, drift: float, k_max: int) -> int:
    """The amortised mode's interval after a search (issue 13's drift rule).

    Multiplicative increase, multiplicative decrease on what the search found: a search that
    accepted its (grown) start step size at the first trial shows the reused step size was still
    right, so the interval doubles (up to ``k_max``); one backtrack keeps it; more halve it.  The
    drift ``|fast EMA - slow EMA|`` of ``log eta`` (see :func:`amortize_interval`) stays a guard: a
    step size that moved by more than 50 % lately searches every step.
    """
    if k_max <= 1 or not math.isfinite(drift) or drift > 0.5:
        return 1
    prev = max(1, int(prev))
    if trials <= 1:
        return min(k_max, 2 * prev)
    if trials == 2:
        return min(k_max, prev)
    return max(1, prev // 2)
