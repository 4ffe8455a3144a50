"""Pure math of the parabolic line searches (PAL, LABPAL, the ``lines`` diagnostic), on floats.

Everything here works on Python floats (float64), so it can be unit-tested without torch.  The
least-squares parabola through many points is autostep's one fit, :func:`autostep._quadratic.fit_parabola`
(same coefficient order).

Conventions: a line is parametrised by the step ``s >= 0`` along a *descent* direction of unit
length; ``l(s) = a s^2 + b s + c``; a parabola with ``a > 0`` and ``b < 0`` has its minimum at
``s_min = -b / (2 a) > 0``.

Paper: Mutschler & Zell, "Using a one dimensional parabolic model of the full-batch loss to estimate
learning rates during training" (LABPAL), eq. 6 and 7, Algorithm 1, section 4.3; PAL is
Mutschler & Zell (2020) as summarised there.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

__all__ = [
    "fit3",
    "evaluate",
    "fit_error",
    "line_min",
    "pal_step",
    "noise_factor",
    "batch_multiplier",
    "approx_calls",
    "paper_step_budget",
    "REF_BATCH",
    "REF_DATASET",
    "REF_STEPS",
]

#: eq. 7: batch size and training-set size of the original CIFAR-10 setting the defaults were tuned on
REF_BATCH = 128
REF_DATASET = 40_000
#: Algorithm 1 / section 4.3: training steps of the original setting (t_max = 150,000 * eps)
REF_STEPS = 150_000


def fit3(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """The parabola ``(a, b, c)`` through three points with distinct ``xs`` (exact interpolation).

    Newton's divided differences, in float64.
    """
    if len(xs) != 3 or len(ys) != 3:
        raise ValueError("fit3 needs exactly three points")
    x0, x1, x2 = (float(x) for x in xs)
    y0, y1, y2 = (float(y) for y in ys)
    if x0 == x1 or x1 == x2 or x0 == x2:
        raise ValueError(f"fit3 needs three distinct positions, got {list(xs)}")
    d01 = (y1 - y0) / (x1 - x0)
    d12 = (y2 - y1) / (x2 - x1)
    a = (d12 - d01) / (x2 - x0)
    # y = y0 + d01 (x - x0) + a (x - x0)(x - x1)
    b = d01 - a * (x0 + x1)
    c = y0 - d01 * x0 + a * x0 * x1
    return a, b, c


def evaluate(a: float, b: float, c: float, s: float) -> float:
    return (a * s + b) * s + c


def fit_error(xs: Sequence[float], ys: Sequence[float], coef: Sequence[float]) -> float:
    """Mean absolute distance between the points and the parabola ``coef = (a, b, c)``."""
    a, b, c = coef
    return sum(abs(float(y) - evaluate(a, b, c, float(x))) for x, y in zip(xs, ys)) / len(xs)


def line_min(a: float, b: float) -> Optional[float]:
    """``-b / (2 a)`` when the parabola opens upwards (``a > 0``), else ``None``."""
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0.0:
        return None
    return -b / (2.0 * a)


def pal_step(loss0: float, loss_mu: float, slope: float, mu: float, alpha: float,
             s_max: float) -> tuple[float, str, float]:
    """PAL's update step on the line from ``l(0)``, ``l(mu)`` and the exact slope ``l'(0)``.

    ``a = (l(mu) - l(0) - l'(0) mu) / mu^2``, ``b = l'(0)``.  Returns ``(s_upd, case, a)``:

    * ``"parabola"`` -- ``a > 0`` and ``b < 0``: ``s_upd = alpha * (-b / (2 a))``;
    * ``"concave"`` -- ``a <= 0`` and ``b < 0``: the measuring step, ``s_upd = mu`` (tested);
    * ``"ascent"`` -- ``b >= 0``: no step, ``s_upd = 0``;
    * ``"nonfinite"`` -- ``l(mu)`` or the slope is not finite: no step.

    ``s_upd`` is then capped at ``s_max``.
    """
    if not (math.isfinite(loss0) and math.isfinite(loss_mu) and math.isfinite(slope)):
        return 0.0, "nonfinite", math.nan
    a = (loss_mu - loss0 - slope * mu) / (mu * mu)
    b = slope
    if b >= 0.0:
        return 0.0, "ascent", a
    if a > 0.0:
        s, case = alpha * (-b / (2.0 * a)), "parabola"
    else:
        s, case = mu, "concave"
    return min(s, s_max), case, a


def noise_factor(dataset_size: int, batch_size: int, ref_batch: int = REF_BATCH,
                 ref_dataset: int = REF_DATASET) -> float:
    """Eq. 7: ``eps = (|B_ori| / |B_new|) * (|D_new| / |D_ori|) = 128 / |B| * |D| / 40000``."""
    if dataset_size <= 0 or batch_size <= 0:
        raise ValueError(f"dataset_size and batch_size must be > 0, got {dataset_size}, {batch_size}")
    return (ref_batch / batch_size) * (dataset_size / ref_dataset)


def batch_multiplier(t: int, total_steps: Optional[int], eps: float = 1.0) -> int:
    """``k(t)`` of Algorithm 1 scaled by the noise factor (section 4.3).

    ``t`` is the number of batches consumed before the accumulation window starts.  Without
    ``total_steps`` the schedule is off and the base multiplier is 1.  With it,

        k(t) = 1 if t <= floor(0.5 t_max), 2 if t <= floor(0.75 t_max), else 4,

    and the result is ``max(1, round_half_up(eps * k(t)))`` batches per update.
    """
    if total_steps is None:
        base = 1
    elif t <= math.floor(total_steps * 0.5):
        base = 1
    elif t <= math.floor(total_steps * 0.75):
        base = 2
    else:
        base = 4
    return max(1, int(math.floor(eps * base + 0.5)))


def approx_calls(approx_batches: int, k: int) -> int:
    """Batches an approximation phase consumes (Algorithm 1, lines 10-12).

    Each round samples ``k`` batches and the phase ends once ``approx_batches`` batches (``B_a /
    B_i``) are reached, so ``k * max(1, ceil(approx_batches / k))``; the first round also defines
    the direction.
    """
    return k * max(1, -(-approx_batches // k))


def paper_step_budget(eps: float = 1.0, base: int = REF_STEPS) -> int:
    """Section 4.3's training length for a noise factor: ``round(150,000 * eps)`` steps (batches)."""
    return int(round(base * eps))
