"""The one least-squares parabola fit of autostep, and its 3x3 solver, on Python floats.

Used by AutoLR (the quadratic in the rate perturbation, :mod:`autostep.autolr.probe`), the LR
search (local quadratics behind the curve's derivatives, :mod:`autostep.finder.curve`) and the
loss-along-lines diagnostic (:mod:`autostep.lines`).

Coefficient order: highest degree first, ``y ~ a d^2 + b d + c`` with ``d = x - center``, as
``numpy.polyfit(x, y, 2)`` and the line-search math of :mod:`autostep.optim._parabola`
(``l(s) = a s^2 + b s + c``) write it.

Everything is float64 and pure Python, so it can be tested against ``numpy.polyfit`` without torch.
"""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["fit_parabola", "solve3"]


def solve3(a: Sequence[Sequence[float]], b: Sequence[float], rtol: float = 0.0) -> Optional[list]:
    """Solve the 3x3 system ``a x = b`` by Gaussian elimination with partial pivoting.

    Returns ``None`` when a pivot is zero or at most ``rtol`` times the largest entry of ``a``
    (singular or numerically singular system); the caller decides what that means.
    """
    m = [list(map(float, row)) + [float(rhs)] for row, rhs in zip(a, b)]
    scale = max(abs(m[i][j]) for i in range(3) for j in range(3)) or 1.0
    for col in range(3):
        piv = max(range(col, 3), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) <= rtol * scale or m[piv][col] == 0.0:
            return None
        m[col], m[piv] = m[piv], m[col]
        for r in range(col + 1, 3):
            f = m[r][col] / m[col][col]
            for c in range(col, 4):
                m[r][c] -= f * m[col][c]
    x = [0.0, 0.0, 0.0]
    for r in (2, 1, 0):
        x[r] = (m[r][3] - sum(m[r][c] * x[c] for c in range(r + 1, 3))) / m[r][r]
    return x


def fit_parabola(xs: Sequence[float], ys: Sequence[float],
                 weights: Optional[Sequence[float]] = None, *, center: float = 0.0,
                 scale: Optional[float] = None, rtol: float = 0.0) -> Optional[tuple]:
    """Weighted least-squares parabola ``ys ~ a d^2 + b d + c`` with ``d = x - center``.

    Returns ``(a, b, c)``, or ``None`` when the normal equations are (numerically) singular, i.e.
    a pivot is at most ``rtol`` times their largest entry (see :func:`solve3`).  With three
    points it interpolates; without ``weights`` it is ``numpy.polyfit(xs - center, ys, 2)``.

    The fit is computed on ``u = d / scale`` (``scale`` defaults to the largest ``|d|``) and on the
    losses centred on their mean, so that tiny offsets (AutoLR's rate perturbations ~1e-4) and
    losses that differ in their sixth digit are as well conditioned as anything else.

    Raises ``ValueError`` when ``xs`` and ``ys`` (or ``weights``) differ in length or fewer than
    three positions are distinct.
    """
    xs = [float(x) for x in xs]
    ys = [float(y) for y in ys]
    if len(xs) != len(ys) or (weights is not None and len(weights) != len(xs)):
        raise ValueError(f"fit_parabola needs one y (and one weight) per x, got {len(xs)} x values, "
                         f"{len(ys)} y values" + ("" if weights is None else f" and {len(weights)} weights"))
    if len(set(xs)) < 3:
        raise ValueError(f"fit_parabola needs at least 3 distinct x values, got {xs!r}")
    ds = [x - center for x in xs]
    h = max(abs(d) for d in ds) if scale is None else float(scale)
    us = [d / h for d in ds]
    ym = sum(ys) / len(ys)
    yc = [y - ym for y in ys]
    if weights is None:
        s = [sum(u ** k for u in us) for k in range(5)]
        t = [sum(y * u ** k for u, y in zip(us, yc)) for k in range(3)]
    else:
        ws = [float(w) for w in weights]
        s = [sum(w * u ** k for w, u in zip(ws, us)) for k in range(5)]
        t = [sum(w * u ** k * y for w, u, y in zip(ws, us, yc)) for k in range(3)]
    coef = solve3([[s[0], s[1], s[2]], [s[1], s[2], s[3]], [s[2], s[3], s[4]]], t, rtol)
    if coef is None:
        return None
    c0, c1, c2 = coef
    return c2 / (h * h), c1 / h, c0 + ym
