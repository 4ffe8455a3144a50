"""One estimate of the rate (paper section 2): probe the superbatch loss along the update
direction at ``eta + eps`` for evenly spaced offsets, fit a quadratic, threshold its minimum.

:func:`estimate` returns the decision as a log entry (``new_lr`` is the proposed rate); the wrapper
applies it.  Parameters, generators and buffers are exactly as before when it returns or raises.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

from .._line import Line
from .._quadratic import fit_parabola
from .._snapshot import RNGSnapshot
from .evaluate import SuperbatchLoss
from .options import Options
from .rules import clip_eps, eps_bound, next_lr, probe_offsets, quadratic_argmin

__all__ = ["estimate"]


def _probe_losses(loss: SuperbatchLoss, batches: Callable[[], Iterable], params: list,
                  direction: Callable[[], list], rate: float, offsets: list) -> list:
    """Rank-averaged superbatch losses at ``params - (rate + e) * d`` for every offset ``e``."""
    rng = RNGSnapshot()
    try:
        line = Line([params], [direction()])
        try:
            local, skipped = [], set()
            for e in offsets:
                line.move([rate + e])
                local.append(loss.local(batches(), rng))
                skipped.add(loss.skipped)
            if len(skipped) > 1:   # different batches left out at different points: not comparable
                local = [math.nan] * len(local)
        finally:
            line.restore()
            line.release()
    finally:
        rng.restore()
    return loss.mean(local)


def estimate(loss: SuperbatchLoss, batches: Callable[[], Iterable], params: list,
             direction: Callable[[], list], *, phase: str, rate: float, loss0: float,
             drop_rate: float, rate_start: Optional[float], options: Options) -> dict:
    """The decision of one estimate at the current point, as a log entry.

    ``batches()`` yields the mini-batches of this estimate's superbatch, ``direction()`` returns
    ``d`` per unit rate, ``rate`` is the current rate, ``loss0`` is ``L(theta)`` (the rate
    superbatch's loss, which sets the epsilon bound), ``drop_rate`` and ``rate_start`` are logged.
    The entry's ``new_lr`` equals ``rate`` when the rate stays (with a ``note`` saying why when no
    fit was made).
    """
    r = options.eps_threshold
    entry = dict(event="recompute", phase=phase, old_lr=rate, new_lr=rate, loss=loss0,
                 rate=drop_rate, rate_start=rate_start, eps_min=math.nan, eps=0.0, clipped=False,
                 rollback=False, eps_bound=eps_bound(loss0, r), offsets=None, losses=None, k=None)
    bound = entry["eps_bound"]
    if not math.isfinite(loss0) or bound <= 0.0:
        entry["note"] = "superbatch loss is not positive and finite; rate unchanged"
        return entry
    offsets = probe_offsets(rate, bound, options.num_samples, options.probe_scale)
    losses = _probe_losses(loss, batches, params, direction, rate, offsets)
    entry.update(offsets=offsets, losses=losses)
    if not all(math.isfinite(v) for v in losses):
        entry["note"] = "non-finite probe loss; rate unchanged"
        return entry
    fit = fit_parabola(offsets, losses)   # (k2, k1, k0): L(eps) ~ k0 + k1 eps + k2 eps^2
    if fit is None:
        raise ValueError(f"AutoLR: the quadratic fit is singular (probe offsets {offsets!r} are not "
                         "distinct); raise num_samples or eps_threshold")
    k = fit[::-1]   # logged in the paper's order (k0, k1, k2)
    e_min = quadratic_argmin(k[1], k[2])
    e, clipped = clip_eps(e_min, loss0, r)
    new = next_lr(rate, e, phase, options.min_lr_ratio)
    entry.update(k=k, eps_min=e_min, eps=e, clipped=clipped, new_lr=new)
    return entry
