"""Superbatch losses: the mean of one no-grad forward per mini-batch, averaged over ranks.

Every pass replays the same generator snapshot (same dropout masks for every probe of one
estimate) and puts back the module buffers (BatchNorm statistics) its forwards changed, so the
training run never sees AutoLR's forwards.

A mini-batch whose loss is not finite (a batch with NaN inputs, say) is left out of the mean with a
``RuntimeWarning`` naming its position, instead of making the whole superbatch loss NaN, which would
freeze the rate for the rest of the run (the drop-rate superbatch is fixed).  Only when every batch
is non-finite is the superbatch loss NaN.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .. import _validate as V
from .._closure import BufferGuard
from .._snapshot import RNGSnapshot
from ..distributed import Reducer

__all__ = ["SuperbatchLoss"]


class SuperbatchLoss:
    """Evaluates ``loss_fn(model, batch)`` averaged over the mini-batches of a superbatch.

    Attributes
    ----------
    forwards:
        Forward passes run so far.
    device:
        Device of the last loss (where the rank reduction runs).
    skipped:
        Positions in the last superbatch of the mini-batches left out (non-finite loss).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                 reducer: Reducer) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.reducer = reducer
        self.forwards = 0
        self.device = torch.device("cpu")
        self.skipped: tuple = ()

    @torch.no_grad()
    def local(self, batches: Iterable, rng: RNGSnapshot) -> float:
        """Mean loss over ``batches`` at the current parameters (this rank only), with the
        generators set to ``rng`` first."""
        rng.restore()
        guard = BufferGuard()
        total, count, outs = None, 0, []
        try:
            with guard.watch():
                for batch in batches:
                    out = V.check_loss(self.loss_fn(self.model, batch), "on a probe mini-batch")
                    out = out.detach().to(torch.float64).reshape(())
                    outs.append(out)
                    total = out if total is None else total + out
                    count += 1
        finally:
            guard.restore()
        if count == 0:
            raise ValueError("the superbatch has no mini-batch; probe_data yielded nothing")
        self.device = total.device
        self.forwards += count
        value = float(total) / count
        self.skipped = ()
        return value if math.isfinite(value) else self._finite_mean(outs)

    def _finite_mean(self, outs: list) -> float:
        """The mean over the batches with a finite loss (NaN if there is none), with a warning."""
        finite = [math.isfinite(float(o)) for o in outs]
        self.skipped = tuple(i for i, ok in enumerate(finite) if not ok)
        good = [o for o, ok in zip(outs, finite) if ok]
        if not good:
            return math.nan
        warnings.warn(
            f"AutoLR: {len(self.skipped)} of {len(outs)} probe mini-batches gave a non-finite loss "
            f"at the current parameters (positions {list(self.skipped)} of the superbatch); they "
            "are left out of the superbatch loss.  Check those batches of probe_data for NaN or "
            "inf values.", RuntimeWarning, stacklevel=4)
        total = good[0]
        for o in good[1:]:
            total = total + o
        return float(total) / len(good)

    def mean(self, values: list) -> list:
        """Average per-rank losses over ranks (one all-reduce for the whole list)."""
        return self.reducer.mean(values, self.device)

    def __call__(self, batches: Iterable) -> float:
        """Rank-averaged loss of ``batches`` at the current parameters (NaN if not finite); the
        generators end where they started."""
        rng = RNGSnapshot()
        v = self.mean([self.local(batches, rng)])[0]
        rng.restore()
        return v if math.isfinite(v) else math.nan
