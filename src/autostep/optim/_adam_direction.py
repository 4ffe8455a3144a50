"""The Adam direction shared by AdamSLS, SALSA, ALSALS and PLASLS (the :class:`AdamDirection`
mixin): provisional Adam moments per segment, the beta1 = 0 search direction with the
preconditioned gradient norm, and the momentum update applied with the accepted step size."""

from __future__ import annotations

from typing import Optional

import torch

from .. import _validate as V
from ._adam import AdamMoments, fusable, fused_adam_update, init_adam_state
from ._armijo import ArmijoOptimizer
from .._lean import Rebuilt
from ._armijo_plan import Plan, Segment, decrease_terms, flat_weights

__all__ = ["AdamDirection", "AdamArmijo", "MEMORY_MODES"]

#: ``memory=``: "fast" keeps the denominator (or ALSALS's direction) for the whole step, Adam's
#: state + 2 parameter copies at the peak; "lean" rebuilds it at each use, Adam's state + 1 copy
MEMORY_MODES = ("fast", "lean")


class AdamDirection:
    """Mixin: Adam moments, the beta1 = 0 search direction and the momentum final update."""

    _state_keys = ("step", "exp_avg", "exp_avg_sq")
    #: hyper-parameters that checkpoints of older versions lack (they load with this optimizer's)
    _optional_group_keys = ("memory",)

    def _validate_adam(self, group: dict) -> None:
        V.betas("betas", group["betas"])
        V.positive("eps", group["eps"])
        V.choice("memory", group["memory"], MEMORY_MODES)

    @property
    def _lean(self) -> bool:
        return self.param_groups[0]["memory"] == "lean"

    @torch.no_grad()
    def _init_state(self) -> None:
        if self.param_groups[0].get("direction", "adam") != "adam":
            return
        for group in self.param_groups:
            for p in self._params_with_grad(group):
                init_adam_state(self.state[p], p)

    def _moments(self, segs: list[Segment]) -> tuple[list, list]:
        """Provisional Adam moments and denominators of every segment, one foreach pass per param
        group (PLASLS's layers of a group share it).  Returns (moments per group, denom per segment)."""
        by_group: dict[int, list[int]] = {}
        for j, sg in enumerate(segs):
            by_group.setdefault(id(sg.group), []).append(j)
        moments, dens = [], [None] * len(segs)
        for idx in by_group.values():
            g = segs[idx[0]].group
            mo = AdamMoments(self.state, [p for j in idx for p in segs[j].params],
                             [t for j in idx for t in segs[j].grads], tuple(g["betas"]), g["eps"])
            if getattr(self, "_commit_now", False):
                mo.commit()
            d = [None] * len(mo.params) if self._lean else mo.denom()
            pos = 0
            for j in idx:
                n = len(segs[j].params)
                dens[j] = (d[pos:pos + n], mo, pos)
                pos += n
            moments.append(mo)
        return moments, dens

    def _reuse_update(self, segs: list[Segment], applied: list[float]) -> None:
        """A reused step is Adam's update with the settled step size: one pass of torch's fused
        kernel per segment (moments and parameters together) where it applies to every segment,
        else the foreach plan.  Named numerical change (issue 13): in float32/float64 the parameters
        can differ from the foreach path's in the last bit and the moments are the same; in
        bfloat16/float16 see :func:`~autostep.optim._adam.fused_adam_update`."""
        if (self.param_groups[0].get("direction", "adam") == "adam"
                and all(fusable(self.state, sg.params, sg.grads) for sg in segs)):
            for sg, eta in zip(segs, applied):
                g = sg.group
                fused_adam_update(self.state, sg.params, sg.grads, tuple(g["betas"]), g["eps"], eta)
            return
        super()._reuse_update(segs, applied)

    def _plan_precond(self, segs: list[Segment], need_s: bool = True, line=None) -> Plan:
        """Search along g / denom (Adam with beta1 = 0), update along m_hat / denom."""
        moments, dens = self._moments(segs)
        search, final, bc1s = [], [], []
        for sg, (den, mo, pos) in zip(segs, dens):
            n = len(sg.params)
            if self._lean:
                search.append(_rebuilt_denom(mo, pos, sg.grads))
                final.append(_rebuilt_denom(mo, pos, mo.ms[pos:pos + n]))
            else:
                search.append((sg.grads, den))
                final.append((mo.ms[pos:pos + n], den))
            bc1s.append(mo.bc1[pos:pos + n])
        s = None
        if need_s:
            dens_in_scratch = self._lean and line is not None
            if dens_in_scratch:  # the denominators, whole, in the line's buffer (before save)
                dens = [d.materialize(b)[1] for d, b in zip(search, line.scratch)]
            s = decrease_terms(line, [sg.grads for sg in segs], [sg.grads for sg in segs],
                               [d for d, _, _ in dens] if not dens_in_scratch else dens,
                               flat_weights(segs, self.reducer), dens_in_scratch=dens_in_scratch)
        return Plan(search=search, s=s, final=final, moments=moments,
                    final_scale=lambda j, eta: [eta / b for b in bc1s[j]])


def _rebuilt_denom(mo: AdamMoments, pos: int, num: list) -> Rebuilt:
    """``num / denom`` of the tensors ``pos, pos + 1, ...`` of ``mo``, the denominator rebuilt at
    each use (``memory="lean"``)."""
    return Rebuilt(lambda i, view, out, tmp: mo.denom_into(pos + i, view, out),
                   lambda i: (mo.vs[pos + i], mo.grads[pos + i]), num=num)


class AdamArmijo(AdamDirection, ArmijoOptimizer):
    """The constructor, checks and plan that :class:`~autostep.AdamSLS` and
    :class:`~autostep.PLASLS` share: Armijo searched along Adam with beta1 = 0, the update applied
    with momentum.  Arguments as torch.optim: ``params``, ``lr``, then keyword-only ``betas``,
    ``eps``, ``weight_decay``, ``max_grad_norm``, ``memory`` and the search's own (see the
    subclasses)."""

    _shared = ("max_trials", "memory")

    def __init__(self, params, lr: float = 0.1, *, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, max_grad_norm: Optional[float] = None,
                 c: float = 0.1, backtrack: float = 0.9, growth_steps: float = 500,
                 reset: str = "growth", reset_every: int = 300, max_lr: float = 1.0,
                 min_lr: float = 1e-10, max_trials: int = 50, memory: str = "fast"):
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
            c=c, backtrack=backtrack, growth_steps=growth_steps, reset=reset,
            reset_every=reset_every, max_lr=max_lr, min_lr=min_lr, max_trials=max_trials,
            memory=memory))

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        self._validate_adam(group)

    def _plan(self, segs: list[Segment], need_s: bool = True, line=None) -> Plan:
        return self._plan_precond(segs, need_s, line)
