"""Moving parameters along a line ``w0 - s * d`` exactly.

A :class:`Line` keeps a copy of the start point ``w0`` and a direction per *segment* (a param group
or a layer), each segment with its own step size.  Every trial point is rebuilt from ``w0`` in place
with ``torch._foreach_*`` ops -- never incrementally -- so the point that was tested is bitwise the
point that stays applied, and :meth:`restore` gives back ``w0`` exactly.

A direction is either a list of tensors ``d`` (point ``w0 - s * d``) or a pair ``(num, den)`` of
lists (point ``w0 - s * num / den``, one fused ``addcdiv``), which lets Adam-type methods move along
``g / denom`` or ``m / denom`` without materialising the quotient.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

Direction = Union[Sequence[torch.Tensor], tuple]

__all__ = ["Line", "axpy_"]


@torch.no_grad()
def axpy_(params: Sequence[torch.Tensor], d: Direction, s) -> None:
    """In place ``params -= s * d`` (``d`` a tensor list or a ``(num, den)`` pair, ``s`` a float or
    one float per tensor).  Used both for trial points (after copying ``w0``) and for direct steps,
    so a point reached either way is bitwise the same."""
    if not params:
        return
    per_tensor = isinstance(s, (list, tuple))
    if not per_tensor and s == 0:
        return
    if isinstance(d, tuple):
        num, den = d
        if per_tensor:
            torch._foreach_addcdiv_(params, num, den, [-float(x) for x in s])
        else:
            torch._foreach_addcdiv_(params, num, den, value=-float(s))
    elif per_tensor:
        torch._foreach_add_(params, torch._foreach_mul(d, [-float(x) for x in s]))
    else:
        torch._foreach_add_(params, d, alpha=-float(s))


class Line:
    """Parameters ``params[j]`` moved to ``w0[j] - scales[j] * dirs[j]`` segment by segment.

    Parameters
    ----------
    params:
        One list of parameter tensors per segment.
    dirs:
        One direction per segment (see module docstring); may be replaced with :meth:`set_dirs`.
    """

    def __init__(self, params: Sequence[Sequence[torch.Tensor]], dirs: Sequence[Direction]):
        if len(params) != len(dirs):
            raise ValueError("one direction per segment is needed")
        self.params = [list(ps) for ps in params]
        self.dirs = list(dirs)
        with torch.no_grad():
            # one copy of the start point; _foreach_mul(x, 1.0) is an exact copy in one kernel
            self.w0 = [list(torch._foreach_mul(ps, 1.0)) if ps else [] for ps in self.params]
        self.scales: list[float] | None = None  # scales of the point the params are at now (None: w0)

    def set_dirs(self, dirs: Sequence[Direction]) -> None:
        self.dirs = list(dirs)

    @torch.no_grad()
    def move(self, scales: Sequence, dirs: Sequence[Direction] | None = None) -> None:
        """Set every segment to ``w0 - scales[j] * dir[j]`` (rebuilt from ``w0``).

        ``scales[j]`` is a float, or a list of floats with one scale per tensor of the segment.
        """
        dirs = self.dirs if dirs is None else dirs
        for ps, w0, d, s in zip(self.params, self.w0, dirs, scales):
            if ps:
                torch._foreach_copy_(ps, w0)
                axpy_(ps, d, s)
        self.scales = list(scales)

    @torch.no_grad()
    def restore(self) -> None:
        """Put every parameter back to ``w0`` exactly."""
        for ps, w0 in zip(self.params, self.w0):
            if ps:
                torch._foreach_copy_(ps, w0)
        self.scales = None

    def release(self) -> None:
        """Drop the copy of ``w0`` (call when the step is over)."""
        self.w0 = []
        self.dirs = []
