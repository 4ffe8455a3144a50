"""Directions that are never stored: ``memory="lean"`` of the Adam-direction searches.

The default ("fast") mode of AdamSLS, SALSA, ALSALS and PLASLS keeps the Adam denominator
``sqrt(v_hat) + eps`` (or ALSALS's whole direction) in a parameter-sized buffer for the whole
step, next to the start point ``w0``: Adam's two moments + two copies.  A :class:`Rebuilt`
direction instead recomputes its tensors from the moments and the gradient each time it is
used, chunk by chunk into a small scratch (:data:`CHUNK` elements), so that a step holds Adam's
state + ``w0`` + O(chunk).

Exactness: the chunks are slices of the same flat tensors and every operation is elementwise, so
each element goes through the same arithmetic as in the whole-tensor (foreach) ops of the fast
mode; the parameters after any number of steps are bitwise those of the fast mode
(``tests/test_lean_memory.py``).  :data:`CHUNK` is a multiple of every SIMD width, so even a
kernel whose vector and scalar-tail paths rounded differently would see the same split.  A tensor
that is not contiguous (or whose inputs are not) is rebuilt whole, into a temporary of its size.
Cost: a move recomputes the denominator (4 more elementwise passes than a move along a stored
one; ALSALS's direction 8 more), chunk by chunk from Python: about 1.3x the fast mode's CPU time
per step on a 235k-parameter MLP (``benchmarks/memory.py``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ._grad_mode import no_grad
from .distributed import locals_

__all__ = ["CHUNK", "Rebuilt", "rebuild_move_"]

#: elements per chunk (128 KiB of float32): a multiple of every SIMD width
CHUNK = 1 << 15


class Rebuilt:
    """A direction rebuilt at each use.

    ``fill(i, view, out, tmp)`` writes tensor ``i`` of the direction's rebuilt part into ``out``,
    where ``view(t)`` maps a full tensor shaped like tensor ``i`` to the piece being rebuilt and
    ``tmp`` is a second buffer shaped like ``out`` when ``two`` (else ``None``).  With ``num``
    (a tensor list) the direction is ``num / rebuilt`` (a move is one ``addcdiv``), else the
    rebuilt tensors are the direction itself.  ``sources(i)`` lists the full tensors ``fill``
    reads for tensor ``i`` (they must be contiguous for chunking).
    """

    __slots__ = ("fill", "num", "sources", "two")

    def __init__(self, fill: Callable, sources: Callable,
                 num: Optional[Sequence[torch.Tensor]] = None, two: bool = False):
        self.fill, self.sources, self.two = fill, sources, two
        self.num = None if num is None else locals_(list(num))

    @no_grad
    def materialize(self, outs: Sequence[torch.Tensor]):
        """The direction in the fast mode's form, its rebuilt part written into ``outs`` (tensors
        shaped like the parameters, e.g. a line's scratch, piece by piece as in a move):
        ``(num, outs)`` or ``outs``."""
        outs = list(outs)
        scratch = _Scratch()
        for i, out in enumerate(outs):
            for view, numel in _pieces([out] + list(self.sources(i))):
                _, tmp = scratch.get(out, numel, self.two)
                self.fill(i, view, view(out), tmp)
        return outs if self.num is None else (self.num, outs)


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t


def _pieces(tensors: Sequence[torch.Tensor]):
    """``(view, numel)`` per piece: flat chunks when every tensor is contiguous (``numel`` the
    chunk's length), else the whole tensor once (``numel`` ``None``)."""
    n = tensors[0].numel()
    if all(t.is_contiguous() for t in tensors):
        for lo in range(0, n, CHUNK):
            hi = min(lo + CHUNK, n)
            yield (lambda t, lo=lo, hi=hi: t.view(-1)[lo:hi]), hi - lo
    else:
        yield _whole, None


class _Scratch:
    """Chunk buffers per (dtype, device), allocated on first use: one, or two for a direction
    that needs a second one (``Rebuilt.two``)."""

    def __init__(self):
        self.bufs: dict = {}

    def get(self, like: torch.Tensor, numel: Optional[int], two: bool):
        if numel is None:  # a non-contiguous tensor: rebuilt whole
            return torch.empty_like(like), (torch.empty_like(like) if two else None)
        key = (like.dtype, like.device, two)
        if key not in self.bufs:
            self.bufs[key] = [torch.empty(CHUNK, dtype=like.dtype, device=like.device)
                              for _ in range(1 + two)]
        bufs = self.bufs[key]
        return bufs[0][:numel], (bufs[1][:numel] if two else None)


@no_grad
def rebuild_move_(params: Sequence[Sequence[torch.Tensor]],
                  w0: Optional[Sequence[Sequence[torch.Tensor]]],
                  dirs: Sequence[Rebuilt], scales: Sequence) -> None:
    """Per segment ``j``: ``params[j] <- w0[j] - scales[j] * dirs[j]`` (``w0=None``: from the
    parameters where they are), piece by piece, bitwise what :meth:`autostep._line.Line.move` /
    :func:`autostep._line.axpy_` give with the direction stored.

    ``scales[j]`` is a float or one float per tensor.  As in ``axpy_``: a ``num / den`` move with
    every scale 0 leaves the points at ``w0``; a plain direction's segment with scale 0 too.
    """
    w0 = w0 if w0 is not None else [None] * len(params)
    live = [(ps, w, d, s) for ps, w, d, s in zip(params, w0, dirs, scales) if ps]
    per = [[float(x) for x in s] if isinstance(s, (list, tuple)) else [float(s)] * len(ps)
           for ps, _, _, s in live]
    flat = [x for xs in per for x in xs]
    quotient = any(d.num is not None for _, _, d, _ in live)
    skip_all = bool(quotient and flat and flat[0] == 0 and all(x == flat[0] for x in flat))
    scratch = _Scratch()
    for (ps, ws, d, _), xs in zip(live, per):
        skip = skip_all or (d.num is None and all(x == 0 for x in xs))
        for i, p in enumerate(ps):
            w = None if ws is None else ws[i]
            srcs = [p] + ([w] if w is not None else []) + ([d.num[i]] if d.num is not None else []) \
                + list(d.sources(i))
            for view, numel in _pieces(srcs):
                pv = view(p)
                if skip:
                    if w is not None:
                        pv.copy_(view(w))
                    continue
                out, tmp = scratch.get(p, numel, d.two)
                d.fill(i, view, out, tmp)
                # from w0: the out= form of the same kernel (w0 + value * ...), one pass fewer
                # than a copy and the in-place update
                base = pv if w is None else view(w)
                if d.num is not None:
                    torch.addcdiv(base, view(d.num[i]), out, value=-xs[i], out=pv)
                else:
                    torch.add(base, out, alpha=-xs[i], out=pv)
