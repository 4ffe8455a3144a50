"""What the Armijo engine searches along: segments, plans and decrease terms.

* :class:`Segment` -- parameters that share one step size (a param group, or a layer for PLASLS);
* :class:`Plan` -- what a subclass computes from the gradients before the search: the search
  direction per segment, the first-order decrease ``s = <g, d>`` per unit step, and optionally a
  final direction when the applied update differs from the searched one;
* :func:`decrease_terms` -- the per-segment sums ``sum <x, y / den>`` on the device;
* :class:`Segments` -- the engine's part that builds the segments of a step, checks their
  gradients and applies a plan's final update.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from .. import _validate as V
from .._closure import ClosureEvaluator
from .._lean import Rebuilt
from .._line import Line, axpy_
from ..distributed import locals_
from ._reductions import dots, sq_norms

__all__ = ["Plan", "Segment", "Segments", "decrease_terms", "flat_weights", "slopes",
           "sq_norm_terms"]


@dataclass
class Segment:
    """Parameters that share one step size: a param group (PLASLS's layers are
    :class:`~autostep.optim.layerwise.LayerSegment`)."""

    group: dict
    params: list  # parameters of the segment that have a gradient this step
    grads: list

    @property
    def eta(self) -> float:
        """The search's own step size (before any scheduler cap)."""
        return self.group["step_size"]

    @eta.setter
    def eta(self, value: float) -> None:
        self.group["step_size"] = value


@dataclass
class Plan:
    """What a subclass computes from the gradients before the search.

    Nothing in the optimizer's state changes while a plan is made: Adam moments are provisional
    (:class:`~autostep.optim._adam.AdamMoments`) and committed by the engine once the step is taken.
    """

    search: list  # one Direction per segment
    s: Optional[torch.Tensor] = None  # <g, d_search> per segment, 1-d on the device (None: not needed)
    final: Optional[list] = None  # Direction per segment for the applied update (None: the tested point)
    final_scale: Optional[Callable[[int, float], Any]] = None  # (segment index, eta) -> scale(s)
    moments: list = field(default_factory=list)  # AdamMoments to commit when the step is taken
    exact_zero: Optional[Callable[[int], bool]] = None  # s_j == 0: is direction j exactly zero?

    def commit(self) -> None:
        for mo in self.moments:
            mo.commit()


def decrease_terms(line: Optional[Line], xs: list, ys: list, dens: Optional[list] = None,
                   weights: Optional[list] = None, dens_in_scratch: bool = False):
    """Per segment ``sum <x, y / den>`` (``den`` optional) as a 1-d tensor on the device.

    ``xs``, ``ys``, ``dens`` hold one tensor list per segment; the line's ``w0`` buffer (not yet
    saved) is the scratch, so no temporary is allocated.  ``dens_in_scratch``: ``dens`` are the
    scratch tensors themselves (``memory="lean"``), overwritten by ``y / den``.  DTensors enter
    through their local shards; ``weights`` (``Reducer.weights`` of the segments' parameters, one
    flat list; ``None`` for all 1) scale each tensor's term so that the rank average of the sums
    is the global sum.

    On accelerators: one foreach pass per operation over all segments (copy, divide, multiply)
    and one flat sum per segment -- a handful of kernel launches whatever the number of tensors.
    On CPU, where a foreach op is itself a loop over the tensors, memory passes are what costs:
    per tensor one ``div(out=scratch)`` and one ``vdot``, two passes instead of four.
    """
    if line is None:
        return None
    buf = line.scratch
    xs = [locals_(seg) for seg in xs]
    ys = [locals_(seg) for seg in ys]
    dens = None if dens is None else [locals_(seg) for seg in dens]
    if _on_cpu(buf):
        sums, k = [], 0
        for bs, xseg, yseg, dseg in zip(buf, xs, ys, dens if dens is not None else [None] * len(buf)):
            parts = []
            for j, (b, x, y) in enumerate(zip(bs, xseg, yseg)):
                if dseg is not None:
                    y = torch.div(y, dseg[j], out=b)
                parts.append(torch.vdot(x.reshape(-1), y.reshape(-1)))
            if parts and weights is not None:
                parts = [t * weights[k + j] for j, t in enumerate(parts)]
            k += len(parts)
            sums.append(torch.stack(parts).sum() if parts else torch.zeros((), dtype=line.dtype))
        return torch.stack(sums)
    flat = [t for seg in buf for t in seg]
    if flat and dens_in_scratch:
        for b, y in zip(flat, [t for seg in ys for t in seg]):
            torch.div(y, b, out=b)
    elif flat:
        torch._foreach_copy_(flat, [t for seg in ys for t in seg])
        if dens is not None:
            torch._foreach_div_(flat, [t for seg in dens for t in seg])
    if flat:
        torch._foreach_mul_(flat, [t for seg in xs for t in seg])
        if weights is not None:
            torch._foreach_mul_(flat, list(weights))
    return line.scratch_sums()


def _stack(ts: list) -> torch.Tensor | None:
    """One 1-d tensor of 0-d tensors (on the first one's device), or ``None`` for no tensors."""
    if not ts:
        return None
    return torch.stack([t.to(ts[0].device) for t in ts])


def sq_norm_terms(segs: list[Segment], reducer) -> torch.Tensor | None:
    """``||g||^2`` per segment (the SGD direction's decrease term), left on the device; local sums
    weighted for sharded parameters (``Reducer.weights``: the rank average is the global sum)."""
    return _stack([sq_norms(sg.grads, reducer.weights(sg.params)) for sg in segs])


def flat_weights(segs: list[Segment], reducer) -> list | None:
    """``Reducer.weights`` of every segment's parameters, in one flat list (``None``: all 1)."""
    return reducer.weights([p for sg in segs for p in sg.params])


def _on_cpu(buf: list) -> bool:
    return all(t.device.type == "cpu" for seg in buf for t in seg)


def slopes(ev: ClosureEvaluator, segs: list, dirs: list, reducer,
           line: Optional[Line] = None) -> torch.Tensor:
    """``<g_f, d>`` per segment (1-d tensor on the device), ``g_f`` the gradient of the loss the
    closure returns.

    Differs from the plan's ``<g, d>`` when a torch-style closure added its gradient to gradients
    accumulated before the step: the direction uses the accumulated gradient, the Armijo test the
    slope of the loss it evaluates.  A :class:`~autostep._lean.Rebuilt` direction is written
    into ``line``'s scratch first (``memory="lean"``; the line is not saved yet).
    """
    by_id = {id(p): g for p, g in zip(ev.params, ev.slope_grads)}
    out = []
    for j, (sg, d) in enumerate(zip(segs, dirs)):
        if isinstance(d, Rebuilt):  # no line: no segment has parameters with a gradient
            d = d.materialize(line.scratch[j] if line is not None else [])
        num, den = d if isinstance(d, tuple) else (d, None)
        keep = [i for i, p in enumerate(sg.params) if by_id.get(id(p)) is not None]
        gs = [by_id[id(sg.params[i])] for i in keep]
        out.append(dots(gs, [num[i] for i in keep], None if den is None else [den[i] for i in keep],
                        reducer.weights([sg.params[i] for i in keep])))
    return torch.stack([t.to(out[0].device) for t in out])

class Segments:
    """Building a step's segments, checking their gradients, planning again with the exact
    clipping coefficient, applying a plan's final update."""

    def _segments(self, ev: ClosureEvaluator) -> list[Segment]:
        segs = []
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            segs.append(Segment(group, ps, [p.grad for p in ps]))
        return segs

    def _check_grads(self, segs: list[Segment]) -> None:
        for sg in segs:
            for p, g in zip(sg.params, sg.grads):
                if g.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients (parameter of shape "
                        f"{tuple(p.shape)}); use nn.Embedding(sparse=False) or a sparse optimizer"
                    )
        if not any(sg.params for sg in segs) and not self._ls.get("warned_no_grad"):
            self._ls["warned_no_grad"] = True
            warnings.warn(
                f"{type(self).__name__}.step: none of the optimizer's parameters received a gradient "
                "from the closure's loss, so nothing was updated. Did you pass the parameters of "
                "the model the closure uses?",
                RuntimeWarning,
                stacklevel=3,
            )

    def _apply_final(self, plan: Plan, segs: list[Segment], etas: list[float], line: Line | None) -> None:
        dirs = plan.final if plan.final is not None else plan.search
        scales = [plan.final_scale(j, eta) if plan.final_scale else eta for j, eta in enumerate(etas)]
        if line is not None:
            line.move(scales, dirs)
        else:
            for sg, d, sc in zip(segs, dirs, scales):
                axpy_(sg.params, d, sc)

    def _replan_clipped(self, ev, segs: list, raw: list, clip: float, reuse: bool, line):
        """The plan again with the exact clipping coefficient (rare: see ``_clip_coef_device``);
        returns ``(plan, s)`` with the decrease terms read (one more host read)."""
        for sg, gs in zip(segs, raw):
            sg.grads = list(torch._foreach_mul(gs, clip)) if gs and clip < 1.0 else list(gs)
        hint = None
        plan = None if reuse else self._plan(segs, need_s=True, line=line)
        if plan is None or plan.s is None:
            hint = V.finite_hint([g for sg in segs for g in sg.grads])
            return plan, ev.reduce([hint])
        if ev.slope_grads is not None:
            plan.s = slopes(ev, segs, plan.search, self.reducer, line)
        elif clip < 1.0:
            plan.s = plan.s / clip
        return plan, ev.reduce(plan.s.tolist())
