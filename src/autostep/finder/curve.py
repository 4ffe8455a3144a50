"""Pure math of the learning-rate/loss curve (section 3 of ``lr-step-sampling-search.txt``).

Everything here works on plain Python floats (no torch, no numpy), so it can be unit-tested on
synthetic curves with known answers.  The axis is ``x = log10(lr)``: the paper insists on a log
scale, and all derivatives, curvatures, tolerances and midpoints are taken along it.

The curve
    Points ``(x_i, y_i)`` with distinct, increasing ``x`` (one per evaluated learning rate) and
    the validation loss ``y_i`` reached after a few training steps at that rate.

Derivatives
    ``y'`` and ``y''`` at each point come from a quadratic fitted around it.  With ``smooth_decades=0`` the
    quadratic goes through the point and its two neighbours, i.e. the classic non-uniform
    three-point finite differences of the paper's grid.  With ``smooth_decades=h > 0`` (decades) it is a
    Gaussian-weighted least-squares quadratic of bandwidth ``max(h, d2/2)``, where ``d2`` is the
    distance to the second-nearest other point.  On a half-decade grid the bandwidth is 0.25, the two
    neighbours get weight ``e^-2`` and the next ones ``e^-8``, so the result is practically the
    three-point rule; where adaptive refinement has packed points closely (default ``h = 0.15``
    decades) it averages the noise instead of dividing it by a tiny spacing squared.  Values (the
    minimum, the half-drop level) always come from the measured losses, never from the fit.

Window (section 3.1 and footnote 1)
    ``max_lr`` is the lowest measured loss; ``y_top`` is the loss of "learning nothing", the value
    at the small-lr end (the leftmost point, unless given); ``half`` is where the curve, going left
    from its minimum, first climbs back to ``y_top - (y_top - y_min) / 2`` (linear interpolation in
    ``x``); ``min_lr`` is the point of minimum curvature ``k = y'' / (1 + y'^2)^(3/2)`` at or left
    of ``half``.

Picks (section 3.2)
    ``log_midpoint`` = ``10 ** ((log10 min_lr + log10 max_lr) / 2)`` (method 1);
    ``half_drop`` = ``10 ** half`` (method 2); ``steepest`` = the point of most negative ``y'``
    inside the window (method 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .. import _validate as V
from .._quadratic import fit_parabola
from .._validate import renamed_keyword

__all__ = [
    "PICKS",
    "CurveAnalysis",
    "analyze",
    "local_quadratic",
    "derivatives",
    "curvature",
    "log_midpoint",
    "cap_losses",
]

#: names of the three selection methods, in the paper's order
PICKS = ("log_midpoint", "half_drop", "steepest")


def log_midpoint(a: float, b: float) -> float:
    """Geometric mean of two positive learning rates (the midpoint on a log axis)."""
    if not (a > 0 and b > 0):
        raise ValueError(f"log_midpoint needs two positive learning rates, got {a!r} and {b!r}")
    return 10.0 ** ((math.log10(a) + math.log10(b)) / 2.0)


def local_quadratic(xs: Sequence[float], ys: Sequence[float], i: int, smooth_decades: float) -> tuple:
    """``(value, first derivative, second derivative)`` of a quadratic fitted around point ``i``.

    ``smooth_decades = 0``: the quadratic through point ``i`` and its two nearest neighbours in index
    (at the ends: the first or last three points).  ``smooth_decades > 0``: Gaussian-weighted least
    squares over all points with bandwidth ``max(smooth_decades, d2 / 2)`` (``d2``: distance to the second-nearest point).
    With fewer than three points the derivatives fall back to a line (or zero).
    """
    n = len(xs)
    if n == 0:
        raise ValueError("local_quadratic needs at least one point")
    x0 = xs[i]
    if n == 1:
        return ys[0], 0.0, 0.0
    if n == 2:
        slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
        return ys[i], slope, 0.0
    if smooth_decades <= 0:
        lo = min(max(i - 1, 0), n - 3)
        idx = range(lo, lo + 3)
        weights = None
        h = max(abs(xs[j] - x0) for j in idx) or 1.0
    else:
        dists = sorted(abs(x - x0) for j, x in enumerate(xs) if j != i)
        h = max(smooth_decades, dists[1] / 2.0)
        idx = range(n)
        weights = [math.exp(-0.5 * ((xs[j] - x0) / h) ** 2) for j in idx]
    # weighted least squares in u = (x - x0) / h (well conditioned), coefficients in x - x0
    fit = fit_parabola([xs[j] for j in idx], [ys[j] for j in idx], weights, center=x0, scale=h,
                       rtol=1e-12)
    if fit is None:  # degenerate: fall back to the secant through the neighbours
        j0, j1 = max(i - 1, 0), min(i + 1, n - 1)
        return ys[i], (ys[j1] - ys[j0]) / (xs[j1] - xs[j0]), 0.0
    a, b, c = fit
    return c, b, 2.0 * a


def derivatives(xs: Sequence[float], ys: Sequence[float], smooth_decades: float = 0.15) -> tuple:
    """Smoothed values, first and second derivatives of ``ys`` along ``xs`` (see the module doc).

    ``xs`` must be strictly increasing.  Returns three lists of the same length as ``xs``.
    """
    _check_xy(xs, ys)
    fits = [local_quadratic(xs, ys, i, smooth_decades) for i in range(len(xs))]
    return [f[0] for f in fits], [f[1] for f in fits], [f[2] for f in fits]


def curvature(d1: Sequence[float], d2: Sequence[float]) -> list:
    """Signed curvature ``k = y'' / (1 + y'^2)^(3/2)`` at each point (equation 1 of the paper)."""
    return [b / (1.0 + a * a) ** 1.5 for a, b in zip(d1, d2)]


def cap_losses(losses: Sequence[float]) -> list:
    """Replace non-finite losses (diverged trials) by the largest finite loss of the curve.

    A diverged trial "counts as a high loss": it is as bad as the worst finite point, which keeps it
    out of every pick without letting an infinity poison the derivatives.  If no loss is finite the
    result is all zeros (a flat curve).
    """
    finite = [v for v in losses if math.isfinite(v)]
    cap = max(finite) if finite else 0.0
    return [v if math.isfinite(v) else cap for v in losses]


def _check_xy(xs, ys) -> None:
    if len(xs) != len(ys):
        raise ValueError(f"got {len(xs)} x values but {len(ys)} losses; they must pair up")
    if len(xs) == 0:
        raise ValueError("the curve is empty: evaluate at least one learning rate")
    for a, b in zip(xs, xs[1:]):
        if not b > a:
            raise ValueError(f"x values must be strictly increasing, got {a!r} then {b!r}")
    for v in ys:
        if not math.isfinite(v):
            raise ValueError(f"loss {v!r} is not finite; pass the curve through cap_losses() first")


@dataclass
class CurveAnalysis:
    """Window, picks and the intermediate quantities of one learning-rate/loss curve.

    Positions are log10 learning rates; ``i_*`` are indices into ``x``.
    """

    x: list
    y: list
    ys: list
    d1: list
    d2: list
    k: list
    y_top: float
    y_min: float
    i_min: int
    half_x: float
    i_knee: int
    i_steep: int
    smooth_decades: float
    notes: list = field(default_factory=list)

    @property
    def lrs(self) -> list:
        """The learning rates of the points."""
        return [10.0 ** v for v in self.x]

    @property
    def window(self) -> tuple:
        """``(min_lr, max_lr)``, the viable window of section 3.1."""
        return 10.0 ** self.x[self.i_knee], 10.0 ** self.x[self.i_min]

    @property
    def picks(self) -> dict:
        """The three selection methods of section 3.2."""
        lo, hi = self.window
        return {
            "log_midpoint": log_midpoint(lo, hi),
            "half_drop": 10.0 ** self.half_x,
            "steepest": 10.0 ** self.x[self.i_steep],
        }

    def points_of_interest(self) -> dict:
        """log10 positions of the points the refinement must resolve, and whether each is a point.

        ``{"max_lr": (x, True), "min_lr": (x, True), "half_drop": (x, False), "steepest": (x, True)}``
        -- ``True`` when the position is an evaluated point, ``False`` when it is interpolated.
        """
        return {
            "max_lr": (self.x[self.i_min], True),
            "min_lr": (self.x[self.i_knee], True),
            "half_drop": (self.half_x, any(abs(self.half_x - v) < 1e-12 for v in self.x)),
            "steepest": (self.x[self.i_steep], True),
        }


def analyze(lrs: Sequence[float], losses: Sequence[float], smooth_decades: float = 0.15,
            y_top: Optional[float] = None, *, smooth: Optional[float] = None) -> CurveAnalysis:
    """Window and picks of a learning-rate/loss curve (sections 3.1-3.2 with footnote 1).

    Parameters
    ----------
    lrs:
        Strictly increasing positive learning rates.
    losses:
        The loss reached at each rate; non-finite values (diverged trials) are capped with
        :func:`cap_losses`.
    smooth_decades:
        Bandwidth in decades of the local quadratic fits (0: the paper's plain finite differences).
        (``smooth=`` is its old, deprecated name.)
    y_top:
        The loss of "learning nothing" (lr -> 0).  Default: the (smoothed) value at the smallest lr.

    Degenerate curves are handled without raising: a curve whose minimum is its leftmost point gives
    a zero-width window at that point (``notes`` says so); so does a flat curve.
    """
    if len(lrs) != len(losses):
        raise ValueError(f"got {len(lrs)} learning rates but {len(losses)} losses; they must pair up")
    for lr in lrs:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"learning rates must be positive finite numbers, got {lr!r}")
    smooth_decades = renamed_keyword("analyze", "smooth", smooth, "smooth_decades", smooth_decades,
                                     0.15)
    bandwidth = V.nonnegative("smooth_decades", smooth_decades,
                              " (a bandwidth in decades; 0 disables smoothing)")
    xs = [math.log10(v) for v in lrs]
    y = cap_losses([float(v) for v in losses])
    ys, d1, d2 = derivatives(xs, y, bandwidth)
    k = curvature(d1, d2)
    notes = []
    n = len(xs)
    i_min = min(range(n), key=lambda i: (y[i], i))
    y_min = y[i_min]
    top = y[0] if y_top is None else float(y_top)
    if i_min == 0 or top <= y_min:
        notes.append("the curve does not decrease: its minimum is at the smallest learning rate")
        return CurveAnalysis(xs, y, ys, d1, d2, k, top, y_min, i_min, xs[i_min], i_min, i_min,
                             bandwidth, notes)
    # method 2 / footnote: where half of the possible reduction is reached, going left from the min
    target = top - 0.5 * (top - y_min)
    half_x = xs[0]
    for j in range(i_min - 1, -1, -1):
        if y[j] >= target:
            span = y[j] - y[j + 1]
            frac = 0.0 if span <= 0 else (y[j] - target) / span
            half_x = xs[j] + frac * (xs[j + 1] - xs[j])
            break
    else:
        notes.append("the curve never climbs back to half the reduction: y_top is below the curve")
    # min_lr: minimum curvature at or left of the half-drop point
    left = [i for i in range(i_min + 1) if xs[i] <= half_x + 1e-12] or [0]
    i_knee = min(left, key=lambda i: (k[i], i))
    # method 3: most negative log-derivative inside the window
    inside = [i for i in range(i_knee, i_min + 1)]
    i_steep = min(inside, key=lambda i: (d1[i], i))
    return CurveAnalysis(xs, y, ys, d1, d2, k, top, y_min, i_min, half_x, i_knee, i_steep,
                         bandwidth, notes)
