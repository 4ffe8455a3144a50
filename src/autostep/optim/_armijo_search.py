"""The backtracking loop of the Armijo family (the :class:`BacktrackingSearch` part of
:class:`~autostep.optim._armijo.ArmijoOptimizer`): trial points ``w0 - eta d``, the plain, smoothed
(SALSA), momentum-aware (ALSALS) or per-segment (PLASLS) Armijo criterion, and backtracking."""

from __future__ import annotations

import math

from .._closure import ClosureEvaluator
from .._line import Line
from . import _functional as F
from ._armijo_plan import Segment

__all__ = ["BacktrackingSearch"]


class BacktrackingSearch:
    """The search loop; the criterion's options come from the engine's class attributes."""

    def _search(self, ev: ClosureEvaluator, line: Line, segs: list[Segment], etas: list[float],
                s: list[float], zero: list[bool]) -> tuple[bool, list[float], int, float]:
        """Backtracking; returns (accepted, step sizes, number of trials, last decrease)."""
        ls = self._ls
        groups = [sg.group for sg in segs]
        cs = [g["c"] for g in groups]
        bts = [g["backtrack"] for g in groups]
        mins = [g["min_lr"] for g in groups]
        max_trials = groups[0]["max_trials"]
        beta = self._smoothing()
        if beta > 0:
            if len(ls["s_ema"]) != len(s):
                ls["s_ema"] = [0.0] * len(s)
            s_used = [F.ema(prev, si, beta) for prev, si in zip(ls["s_ema"], s)]
            ls["s_ema"] = s_used
            ls["ema_count"] += 1
        else:
            s_used = s
        f0 = ev.loss0
        # Below the loss's own rounding a comparison of decreases is meaningless: near a minimum the
        # sufficient decrease drops under float resolution and a strict test would reject every
        # size, collapsing eta to min_lr.  Differences within a few ulps of f0 count as equal.
        tol = 4.0 * ev.loss_eps * abs(f0)
        etas = list(etas)
        for t in range(1, max_trials + 1):
            line.move(etas)
            f = ev.trial()
            dec = f0 - f
            if self._per_segment:
                holds = [
                    z or F.armijo_holds(dec + tol, F.armijo_rhs([c], [e], [si], self._momentum_aware))
                    for z, c, e, si in zip(zero, cs, etas, s_used)
                ]
                ok = all(holds)
            else:
                lhs = F.ema(ls["h_ema"], dec, beta) if beta > 0 and math.isfinite(dec) else dec
                rhs = F.armijo_rhs(cs, etas, s_used, self._momentum_aware)
                ok = F.armijo_holds(lhs + tol, rhs)
                holds = [ok] * len(etas)
            if ok:
                if beta > 0:
                    ls["h_ema"] = lhs
                return True, etas, t, dec
            new = [e if h else max(e * b, m) for e, h, b, m in zip(etas, holds, bts, mins)]
            if t == max_trials or new == etas:  # exhausted, or every failing size sits at min_lr
                break
            etas = new
        return False, etas, t, dec
