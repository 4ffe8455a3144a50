"""Inner products and squared norms over lists of tensors, as the line searches' decisions need
them: on the local shards of DTensors, weighted so that the rank average is the global sum
(``Reducer.weights``), and in scale-safe float versions that neither overflow nor underflow."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..distributed import locals_

__all__ = ["dots", "norms_of", "sq_norms", "sq_norm_float", "dot_float", "all_zero"]


def _as_float64(parts: list) -> torch.Tensor:
    """The 0-d tensors ``parts`` as one 1-d float64 tensor: stacked first and converted once when
    they share a dtype and a device (the same exact values, two calls instead of one per part)."""
    first = parts[0]
    if all(p.dtype == first.dtype and p.device == first.device for p in parts):
        return torch.stack(parts).double()
    return torch.stack([p.double() for p in parts])


def _weighted(parts: list, weights: Sequence[float] | None) -> torch.Tensor:
    t = _as_float64(parts)
    if weights is not None:
        t = t * torch.tensor(list(weights), dtype=torch.float64, device=t.device)
    return t.sum()


def dots(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor],
         dens: Sequence[torch.Tensor] | None = None,
         weights: Sequence[float] | None = None) -> torch.Tensor:
    """``sum_i w_i <x_i, y_i / den_i>`` as a 0-d float64 tensor (no full-size temporaries kept).

    On the local shards of DTensors; ``weights`` (``Reducer.weights``, default 1) turn the local sum
    into the share of the global one that the rank average expects."""
    if not xs:
        return torch.zeros((), dtype=torch.float64)
    xs, ys = locals_(xs), locals_(ys)
    dens = None if dens is None else locals_(dens)
    if dens is None:
        parts = [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys)]
    else:
        parts = [torch.dot(x.reshape(-1), torch.div(y, d).reshape(-1)) for x, y, d in zip(xs, ys, dens)]
    return _weighted(parts, weights)


#: 16-bit float types: their norms are accumulated and returned in float32 (see :func:`norms_of`)
_HALF = (torch.float16, torch.bfloat16)


def norms_of(xs: list) -> list:
    """The 2-norms of ``xs`` (one fused call): in their own dtype, except that float16 and
    bfloat16 tensors get float32 norms.  A norm returned in a 16-bit type keeps 8 (bfloat16) or
    11 (float16) bits and is denormal below 6e-5 in float16: LABPAL's NSGD step ``s / ||d||``
    was 5 % too long on a float16 gradient of 1e-7, and a bfloat16 norm is off by up to 0.2 %."""
    if not any(x.dtype in _HALF for x in xs):
        return torch._foreach_norm(xs)
    if all(x.dtype in _HALF or x.dtype == torch.float32 for x in xs):
        return torch._foreach_norm(xs, 2, dtype=torch.float32)
    return [torch.linalg.vector_norm(x, dtype=torch.float32 if x.dtype in _HALF else None)
            for x in xs]


def sq_norms(xs: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """``sum_i w_i ||x_i||^2`` as a 0-d float64 tensor (local shards, weights as :func:`dots`)."""
    if not xs:
        return torch.zeros((), dtype=torch.float64)
    norms = norms_of(locals_(xs))
    if weights is None:
        return _as_float64(norms).pow(2).sum()
    return _weighted([n.double().pow(2) for n in norms], weights)


def sq_norm_float(xs: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> float:
    """``sum_i ||x_i||^2`` as a float that neither overflows nor underflows on float32 inputs.

    The float32 norms are used when they are representable; a result of 0 or inf (squares beyond
    float32 range, |x| above ~1e19 or below ~1e-19) is recomputed in float64 (rare: extreme loss
    scales).  NaN stays NaN.  Local shards and ``weights`` as :func:`dots`."""
    xs = locals_(xs)
    v = float(sq_norms(xs, weights))
    if xs and (v == 0.0 or math.isinf(v)):
        n64 = torch._foreach_norm(xs, 2, dtype=torch.float64)
        v = float(_weighted([n.to(n64[0].device).pow(2) for n in n64], weights))
    return v


def dot_float(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor],
              weights: Sequence[float] | None = None) -> float:
    """``sum_i <x_i, y_i>`` as a float, recomputed in float64 when float32 over- or underflows
    (an overflow of terms of both signs gives NaN, so a NaN is recomputed too)."""
    xs, ys = locals_(xs), locals_(ys)
    v = float(dots(xs, ys, weights=weights))
    if xs and (v == 0.0 or not math.isfinite(v)):
        v = float(_weighted([torch.dot(x.reshape(-1).double(), y.reshape(-1).double())
                             for x, y in zip(xs, ys)], weights))
    return v


def all_zero(xs: Sequence[torch.Tensor]) -> bool:
    """True if every element is zero on this process (``Reducer.any_nonzero`` asks every rank)."""
    return all(not bool(x.any()) for x in locals_(xs))
