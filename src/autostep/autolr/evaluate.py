"""Superbatch losses: the mean of one no-grad forward per mini-batch, averaged over ranks.

Every pass replays the same generator snapshot (same dropout masks for every probe of one
estimate) and puts back the module buffers (BatchNorm statistics) its forwards changed, so the
training run never sees AutoLR's forwards.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .._closure import BufferGuard, RNGSnapshot
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
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                 reducer: Reducer) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.reducer = reducer
        self.forwards = 0
        self.device = torch.device("cpu")

    @torch.no_grad()
    def local(self, batches: Iterable, rng: RNGSnapshot) -> float:
        """Mean loss over ``batches`` at the current parameters (this rank only), with the
        generators set to ``rng`` first."""
        rng.restore()
        guard = BufferGuard()
        total, count = None, 0
        try:
            with guard.watch():
                for batch in batches:
                    out = self.loss_fn(self.model, batch)
                    if not isinstance(out, torch.Tensor) or out.numel() != 1:
                        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ""
                        raise TypeError(f"loss_fn(model, batch) must return a scalar tensor, got "
                                        f"{type(out).__name__}{shape}")
                    out = out.detach().to(torch.float64).reshape(())
                    total = out if total is None else total + out
                    count += 1
        finally:
            guard.restore()
        self.device = total.device
        self.forwards += count
        return float(total) / count

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
