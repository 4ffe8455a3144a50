"""Moving parameters along a line ``w0 - s * d`` exactly.

A :class:`Line` keeps a copy of the start point ``w0`` and a direction per *segment* (a param group
or a layer), each segment with its own step size.  Every trial point is rebuilt from ``w0`` in place
with ``torch._foreach_*`` ops -- never incrementally -- so the point that was tested is bitwise the
point that stays applied, and :meth:`restore` gives back ``w0`` exactly.

A direction is either a list of tensors ``d`` (point ``w0 - s * d``) or a pair ``(num, den)`` of
lists (point ``w0 - s * num / den``, one fused ``addcdiv``), which lets Adam-type methods move along
``g / denom`` or ``m / denom`` without materialising the quotient.

Cost: a move is one ``_foreach_copy_`` and one fused ``_foreach_add_``/``_foreach_addcdiv_`` over
the parameters of *all* segments (per-segment step sizes become per-tensor scalars).  When every
parameter is a plain dense tensor of one dtype on one device, ``w0`` is one flat buffer with a view
per parameter; before :meth:`save` that buffer is free, and the optimizers use it as scratch for
their inner products (:attr:`scratch`, :meth:`scratch_sums`), so a step needs no other temporary.
Parameters of other kinds (``DTensor``, mixed dtypes or devices) get one buffer per tensor; the
results are the same, only the summation of :meth:`scratch_sums` is per tensor.

DTensor parameters (FSDP2, tensor parallel) are moved through their local shards
(:func:`autostep.distributed.locals_`): every op here is pointwise, so each rank updates its own
shard with the same fused foreach kernels (DTensor has no sharding rule for ``_foreach_copy_``);
the scratch buffer is then one flat local buffer too.  Plain tensors pass through unchanged.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from ._grad_mode import no_grad
from ._lean import Rebuilt, rebuild_move_
from .distributed import locals_

Direction = Union[Sequence[torch.Tensor], tuple]

__all__ = ["Line", "axpy_", "flat_buffer"]


def _plain(t: torch.Tensor) -> bool:
    return type(t) in (torch.Tensor, torch.nn.Parameter) and t.layout == torch.strided


def _row_major(shape) -> tuple:
    """The strides of a contiguous tensor of ``shape`` (as ``torch.empty(shape).stride()``)."""
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def flat_buffer(tensors: Sequence[torch.Tensor]):
    """Uninitialised storage shaped like ``tensors``: ``(flat, views)``.

    ``flat`` is one 1-d tensor with ``views[i]`` a contiguous view shaped like ``tensors[i]`` when
    all tensors are plain dense tensors of one dtype and device; otherwise ``flat`` is ``None`` and
    ``views`` are separate ``empty_like`` tensors (what a ``DTensor`` or a mixed list needs)."""
    tensors = list(tensors)
    if tensors and all(_plain(t) for t in tensors) and len({(t.dtype, t.device) for t in tensors}) == 1:
        numels = [t.numel() for t in tensors]
        flat = torch.empty(sum(numels), dtype=tensors[0].dtype, device=tensors[0].device)
        # as_strided with row-major strides: the views that flat[off:off + n].view(shape) gives, at
        # half the cost per tensor (this runs every searched step)
        views, off = [], 0
        for t, n in zip(tensors, numels):
            views.append(flat.as_strided(t.shape, _row_major(t.shape), off))
            off += n
        return flat, views
    return None, [torch.empty_like(t) for t in tensors]


@no_grad
def axpy_(params: Sequence[torch.Tensor], d: Direction, s) -> None:
    """In place ``params -= s * d`` (``d`` a tensor list or a ``(num, den)`` pair, ``s`` a float or
    one float per tensor).  Used both for trial points (after copying ``w0``) and for direct steps,
    so a point reached either way is bitwise the same."""
    params = locals_(params)  # DTensors: their local shards (every op here is pointwise)
    if not params:
        return
    if isinstance(d, Rebuilt):  # memory="lean": rebuilt piece by piece, bitwise the same
        rebuild_move_([params], None, [d], [s])
        return
    per_tensor = isinstance(s, (list, tuple))
    if per_tensor and all(x == s[0] for x in s):
        s, per_tensor = s[0], False
    if not per_tensor and s == 0:
        return
    # a finite scale beyond what the fused op converts it to (see _beyond_dtype): in float64
    alpha = not per_tensor and not isinstance(d, tuple)  # the one op that takes the param dtype
    big = abs(float(s)) if not per_tensor else _largest(s)
    if big > (_HALF_MAX if alpha else _F32_MAX) and _beyond_dtype(params, big, alpha):
        _axpy_wide_(params, d, s if per_tensor else [s] * len(params))
        return
    if isinstance(d, tuple):
        num, den = locals_(d[0]), locals_(d[1])
        if per_tensor:
            torch._foreach_addcdiv_(params, num, den, [-float(x) for x in s])
        else:
            torch._foreach_addcdiv_(params, num, den, value=-float(s))
    elif per_tensor:
        torch._foreach_add_(params, torch._foreach_mul(locals_(d), [-float(x) for x in s]))
    else:
        torch._foreach_add_(params, locals_(d), alpha=-float(s))


#: the largest finite float16 / float32 values: below them every scale converts (see _beyond_dtype)
_HALF_MAX = 65504.0
_F32_MAX = float(torch.finfo(torch.float32).max)


def _largest(scales: Sequence[float]) -> float:
    """The largest ``|scale|``; a NaN does not hide a large scale behind it (``max`` keeps a NaN
    that comes first)."""
    big = max(map(abs, scales))
    if big != big:
        big = max((a for a in map(abs, scales) if a == a), default=0.0)
    return float(big)


def _beyond_dtype(params: Sequence[torch.Tensor], big: float, alpha: bool) -> bool:
    """Whether the finite scale ``big`` is too large for the fused op that would apply it: the
    foreach ops take the scale as a scalar and raise ("value cannot be converted ... without
    overflow") -- ``_foreach_add_(..., alpha=)`` in the parameter's dtype (``alpha``), the
    ``addcdiv`` and ``mul`` paths in its compute type (float32 for the half types, float64 for
    float64), where a per-tensor ``mul`` gives inf instead of raising.

    Scales that large come from normalised directions with tiny norms (``step / ||d||`` for a
    gradient of 1e-40 in float32, or of 1e-5 in float16: PAL, LABPAL); the products
    ``scale * d`` are of ordinary size.  The caller compares ``big`` with one constant first."""
    if big == float("inf"):
        return False
    limits = [torch.finfo(p.dtype if alpha or p.dtype == torch.float64 else torch.float32).max
              for p in params if p.is_floating_point()]
    return bool(limits) and big > min(limits)


@no_grad
def _axpy_wide_(params: list, d: Direction, scales: list) -> None:
    """``params[i] -= scales[i] * d[i]`` with the update computed in float64 and rounded to the
    parameter's dtype (:func:`axpy_` for scales beyond the dtype's range; see
    :func:`_beyond_dtype`)."""
    if isinstance(d, tuple):
        num, den = locals_(d[0]), locals_(d[1])
        for p, n, q, sc in zip(params, num, den, scales):
            p.sub_((n.double() * float(sc) / q.double()).to(p.dtype))
    else:
        for p, x, sc in zip(params, locals_(d), scales):
            p.sub_((x.double() * float(sc)).to(p.dtype))


class Line:
    """Parameters ``params[j]`` moved to ``w0[j] - scales[j] * dirs[j]`` segment by segment.

    Parameters
    ----------
    params:
        One list of parameter tensors per segment.
    dirs:
        One direction per segment (see module docstring); may be replaced with :meth:`set_dirs`.
    save:
        Copy the start point now (default).  With ``save=False`` the buffer is allocated but
        holds garbage until :meth:`save`; meanwhile it may serve as :attr:`scratch`.
    """

    def __init__(self, params: Sequence[Sequence[torch.Tensor]], dirs: Sequence[Direction],
                 save: bool = True):
        if len(params) != len(dirs):
            raise ValueError("one direction per segment is needed")
        self.params = [locals_(ps) for ps in params]  # DTensors: their local shards (aliases)
        self.dirs = list(dirs)
        self._all = [p for ps in self.params for p in ps]
        self._sizes = [len(ps) for ps in self.params]
        with torch.no_grad():
            self._flat, views = flat_buffer(self._all)
        self.w0, pos = [], 0
        for n in self._sizes:
            self.w0.append(views[pos:pos + n])
            pos += n
        self._w0_all = views
        self.dtype = self._all[0].dtype if self._all else torch.get_default_dtype()
        self.saved = False
        self.scales: list | None = None  # scales of the point the params are at now (None: w0)
        #: set by an owner that alone moves the parameters while the line lives: a move from a
        #: point known to be w0 (after save/restore) then skips the copy of w0 (one pass less)
        self.exclusive = False
        self._at_w0 = False
        if save:
            self.save()

    # ------------------------------------------------------------------ buffer
    @no_grad
    def save(self) -> None:
        """Copy the current parameters into ``w0`` (one foreach copy)."""
        if self._all:
            torch._foreach_copy_(self._w0_all, self._all)
        self.saved = True
        self.scales = None
        self._at_w0 = True

    @property
    def scratch(self) -> list:
        """Per segment, tensors shaped like its parameters, free to use until :meth:`save`."""
        if self.saved:
            raise RuntimeError("the scratch buffer holds w0 after save()")
        return self.w0

    @no_grad
    def scratch_sums(self) -> torch.Tensor:
        """Per segment, the sum of every element of its scratch tensors (1-d, one entry per segment)."""
        if self._flat is not None:
            if len(self._sizes) == 1:
                return self._flat.sum().reshape(1)
            numels = [sum(t.numel() for t in seg) for seg in self.w0]
            return torch.stack([c.sum() for c in self._flat.split(numels)])
        sums = [torch.stack([t.sum() for t in seg]).sum() if seg else torch.zeros(())
                for seg in self.w0]
        return torch.stack([s.to(sums[0].device) for s in sums])

    def set_dirs(self, dirs: Sequence[Direction]) -> None:
        self.dirs = list(dirs)

    # ------------------------------------------------------------------ moves
    @no_grad
    def move(self, scales: Sequence, dirs: Sequence[Direction] | None = None) -> None:
        """Set every segment to ``w0 - scales[j] * dir[j]`` (rebuilt from ``w0``).

        ``scales[j]`` is a float, or a list of floats with one scale per tensor of the segment.
        All segments move in one foreach copy and one fused update when their directions are of
        one kind; the result is bitwise what per-segment updates give.
        """
        dirs = self.dirs if dirs is None else list(dirs)
        if not self._all:
            self.scales = list(scales)
            return
        if any(isinstance(d, Rebuilt) for d in dirs):  # memory="lean" (see autostep._lean)
            at_w0 = self.exclusive and self._at_w0
            self._at_w0 = False
            rebuild_move_(self.params, None if at_w0 else self.w0, dirs, scales)
            self.scales = list(scales)
            return
        if not (self.exclusive and self._at_w0):
            torch._foreach_copy_(self._all, self._w0_all)
        self._at_w0 = False
        per_tensor: list[float] = []
        for n, s in zip(self._sizes, scales):
            per_tensor.extend(s if isinstance(s, (list, tuple)) else [s] * n)
        live = [(ps, d, s) for ps, d, s in zip(self.params, dirs, scales) if ps]
        if live and all(isinstance(d, tuple) for _, d, _ in live):
            num = [t for _, d, _ in live for t in d[0]]
            den = [t for _, d, _ in live for t in d[1]]
            axpy_(self._all, (num, den), per_tensor)
        elif live and all(not isinstance(d, tuple) for _, d, _ in live) and all(
                x == per_tensor[0] for x in per_tensor):
            axpy_(self._all, [t for _, d, _ in live for t in d], per_tensor[0])
        else:  # mixed kinds, or per-segment scales along plain directions: as many calls as segments
            for ps, d, s in live:
                axpy_(ps, d, s)
        self.scales = list(scales)

    @no_grad
    def restore(self) -> None:
        """Put every parameter back to ``w0`` exactly."""
        if self._all and self.saved and not (self.exclusive and self._at_w0):
            torch._foreach_copy_(self._all, self._w0_all)
        self.scales = None
        self._at_w0 = self.saved

    def release(self) -> None:
        """Drop the copy of ``w0`` (call when the step is over)."""
        self.w0 = []
        self._w0_all = []
        self._flat = None
        self.dirs = []
