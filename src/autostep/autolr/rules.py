"""AutoLR's rules as pure functions on floats: the quadratic's minimum, the epsilon threshold, the
sample offsets, the next rate, the rollback test and the saturation threshold.

The least-squares fit of ``L(eps) = k0 + k1 eps + k2 eps^2`` itself is autostep's one parabola fit,
:func:`autostep._quadratic.fit_parabola` (which returns ``(k2, k1, k0)``, highest degree first).

Nothing here touches a model or an optimizer, so every rule is testable on plain numbers.  Section
and equation numbers refer to *AutoLR: a method for automatic tuning of learning rate*
(``autolr-explore-exploit.txt``).
"""

from __future__ import annotations

import math
from typing import Optional

__all__ = [
    "EXPLORE",
    "EXPLOIT",
    "quadratic_argmin",
    "eps_bound",
    "clip_eps",
    "probe_offsets",
    "next_lr",
    "should_rollback",
    "SaturationMonitor",
]

EXPLORE, EXPLOIT = "explore", "exploit"


def quadratic_argmin(k1: float, k2: float) -> float:
    """``eps_min = -k1 / (2 k2)`` for a convex fit; for ``k2 <= 0`` (no minimum) ``+-inf`` in the
    direction where the fit descends, and ``0.0`` when it is flat."""
    if k2 > 0:
        return -k1 / (2.0 * k2)
    if k1 < 0:
        return math.inf
    if k1 > 0:
        return -math.inf
    return 0.0


def eps_bound(loss: float, r: float) -> float:
    """Largest ``|eps|`` allowed by ``|eps|^3 < r * L(theta)``: ``(r * L)^(1/3)`` (0 if ``L <= 0``)."""
    if not (loss > 0 and math.isfinite(loss)):
        return 0.0
    return (r * loss) ** (1.0 / 3.0)


def clip_eps(eps_min: float, loss: float, r: float) -> tuple[float, bool]:
    """Epsilon thresholding (paper eq. 3): keep ``eps_min`` if ``|eps_min|^3 < r * L``, else clip it
    to ``sign(eps_min) * (r * L)^(1/3)``.  Returns ``(eps, clipped)``; NaN gives ``(0.0, True)``."""
    if math.isnan(eps_min):
        return 0.0, True
    if abs(eps_min) ** 3 < r * loss:
        return eps_min, False
    return math.copysign(eps_bound(loss, r), eps_min), True


def probe_offsets(lr: float, bound: float, num_samples: int,
                  probe_scale: Optional[float] = None) -> list[float]:
    """``num_samples`` offsets evenly spaced in ``[-h, h]``: ``h = bound``, or
    ``min(probe_scale * lr, bound)`` when ``probe_scale`` is given."""
    h = bound if probe_scale is None else min(probe_scale * lr, bound)
    n = num_samples
    return [h * (2.0 * i / (n - 1) - 1.0) for i in range(n)]


def next_lr(lr: float, eps: float, phase: str, min_lr_ratio: float) -> float:
    """New rate from the thresholded ``eps``: explore only rises (``lr + max(eps, 0)``); exploit
    takes ``lr + eps`` but never less than ``min_lr_ratio * lr``."""
    if phase == EXPLORE:
        return lr + max(eps, 0.0)
    return max(lr + eps, min_lr_ratio * lr)


def should_rollback(phase: str, rate_before: float, rate_after: float) -> bool:
    """Whether a learning-rate change is undone, given the drop rates of the windows before and after.

    Non-finite ``rate_after`` always rolls back.  Exploit: the change reduced the drop rate
    (``rate_after < rate_before``), as in the paper.  Explore: the loss rose (``rate_after < 0``).
    """
    if not math.isfinite(rate_after):
        return True
    if phase == EXPLORE:
        return rate_after < 0.0
    return rate_after < rate_before


class SaturationMonitor:
    """The saturation threshold of section 2.1: relative first, absolute after the first crossing.

    ``crossed(rate_start, rate_now)`` is True when the current learning rate has saturated:
    relative mode: ``rate_start > 0`` and ``rate_start / rate_now >= threshold`` (written
    ``rate_now * threshold <= rate_start``, so ``rate_now <= 0`` counts as saturated); the first
    crossing switches, once, to absolute mode with ``absolute = max(rate_now, 0)``; absolute mode:
    ``rate_now <= absolute``.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)
        self.mode = "relative"
        self.absolute: Optional[float] = None
        self.switched_now = False

    def crossed(self, rate_start: Optional[float], rate_now: float) -> bool:
        self.switched_now = False
        if not math.isfinite(rate_now):
            return False
        if self.mode == "absolute":
            return rate_now <= self.absolute
        if rate_start is None or not rate_start > 0:
            return False
        if rate_now * self.threshold <= rate_start:
            self.mode = "absolute"
            self.absolute = max(rate_now, 0.0)
            self.switched_now = True
            return True
        return False

    def state_dict(self) -> dict:
        return {"mode": self.mode, "absolute": self.absolute}

    def load_state_dict(self, sd: dict) -> None:
        self.mode, self.absolute = sd["mode"], sd["absolute"]
