"""PAL: the mini-batch parabolic approximation line search (Mutschler & Zell, 2020).

As the LABPAL paper summarises and compares against it: per step one forward with grad at ``w``, one
extra forward at the measuring step ``mu`` along the unit (optionally momentum-adapted) direction,
the exact directional derivative from the gradient, a parabola through ``l(0)``, ``l'(0)`` and
``l(mu)``, and a step to ``alpha`` times its minimum, capped at ``s_max``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .._closure import NonFiniteLossError, unscale_grads
from .._line import Line
from . import _parabola as P
from .. import _validate as V
from ._docs import PARABOLIC_DOC
from ._parabolic_base import ParabolicOptimizer
from ._reductions import dot_float, sq_norm_float
from ._state import ls_property

__all__ = ["PAL"]


class PAL(ParabolicOptimizer):
    __doc__ = """Parabolic approximation line search on the mini-batch loss (PAL).

    Each ``step(closure)``:

    1. evaluates the loss ``l(0)`` with grad and back-propagates; the direction is
       ``d = g + beta * d_prev`` (``d = g`` with the default ``momentum = 0``), the line is
       ``w - s * d / ||d||`` and its exact slope is ``b = l'(0) = -<g, d> / ||d||``;
    2. evaluates ``l(mu)`` once under ``torch.no_grad()`` (one trial);
    3. fits ``l(s) = a s^2 + b s + l(0)`` with ``a = (l(mu) - l(0) - b mu) / mu^2`` and steps to
       ``s_upd = min(alpha * (-b / (2 a)), max_step)`` when ``a > 0`` and ``b < 0``; to the measured
       point ``s_upd = mu`` when ``a <= 0`` and ``b < 0`` (the published fallback); and not at all
       when ``b >= 0`` (a momentum direction that is not a descent direction), when ``||d|| = 0``
       (no trial forward is spent then) or when ``l(mu)`` is not finite.

    The applied point is rebuilt exactly from the saved start point, ``w0 - (s_upd/||d||) d``.

    Parameters (defaults: the LABPAL paper's PAL grid, appendix G.1, and the PAL paper)
        measuring_step (0.1): ``mu``, the measuring step along the unit direction (grid
            ``{0.1, 1}``).
        alpha (1.66): update step adaptation (grid ``{1, 1.66}``; the PAL paper's ``1/0.6``).
        max_step (3.16): ``s_max`` (grid ``{10**0.5}``).
        momentum (0.0): direction adaptation factor ``beta`` (grid ``{0.0}``; the PAL paper also
            uses 0.4).  It may differ between param groups; the others are shared by all groups.
        lr (0.0): **read-out only**: after each step ``param_groups[i]["lr"]`` holds the applied
            learning rate ``s_upd / ||d||`` (the multiplier of ``d``), 0 for a skipped step.  The
            value passed is validated (``>= 0``) and shown until the first step; writing it (e.g.
            from an LR scheduler) has no effect on the search and raises a ``RuntimeWarning``
            (once).  A ``momentum`` written between steps (``OneCycleLR``) is used, with a warning.

    Param groups
        One line through all groups: ``||d||`` and ``<g, d>`` are summed over every parameter
        that has a gradient; parameters whose ``grad`` is ``None`` are not moved.

    Deviations from the published code
        A non-finite ``l(mu)`` restores the start point and skips the step (the published code
        returned with the parameters left at the measuring point).  The closure never calls
        ``backward()`` itself; the RNG is replayed from a snapshot instead of reseeding from the
        clock.  ``.grad`` is left as the batch gradient (the published code overwrote it with the
        momentum direction).

    Counters: :attr:`forwards` (2 per step), :attr:`backwards` (1), :attr:`trials` (1, 0 when
    ``||d|| = 0``), :attr:`steps`, :attr:`skipped_steps`; details of the last step in
    :attr:`last_step`; :attr:`update_length` is the last ``s_upd``.
    """ + PARABOLIC_DOC

    _shared = ("measuring_step", "alpha", "max_step")
    _legacy_ls = {"step_size": "update_length"}  # the older name of update_length
    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr: float = 0.0, *, momentum: float = 0.0, weight_decay: float = 0.0,
                 max_grad_norm: Optional[float] = None, measuring_step: float = 0.1,
                 alpha: float = 1.66, max_step: float = 3.16):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        max_grad_norm=max_grad_norm, measuring_step=measuring_step, alpha=alpha,
                        max_step=max_step)
        ls = {"step": 0, "forwards": 0, "backwards": 0, "trials": 0, "skipped": 0,
              "update_length": 0.0}
        super().__init__(params, defaults, ls)

    def _validate_group(self, group: dict) -> None:
        V.nonnegative("lr", group["lr"])
        V.positive("measuring_step", group["measuring_step"])
        V.positive("alpha", group["alpha"])
        V.positive("max_step", group["max_step"])
        V.half_open_unit("momentum", group["momentum"], " (PAL's direction adaptation factor)")

    @torch.no_grad()
    def _init_state(self) -> None:
        for group in self.param_groups:
            if group["momentum"] > 0:
                for p in self._params_with_grad(group):
                    self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))

    skipped_steps = ls_property("skipped", "Steps that left the parameters unchanged (ascent "
                                           "direction, zero or non-finite).")

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None,
             grad_scaler=None) -> torch.Tensor:
        """Take one PAL step; ``closure`` returns the mini-batch loss (see the class docstring).

        Returns the loss at the start point.  A non-finite start loss or gradient skips the step
        before anything changes; a step that raises leaves the optimizer as it was (see
        :class:`~autostep.optim._optimizer.AutostepOptimizer`).  ``step(None)`` with all-zero
        gradients only creates the state (torch's distributed checkpoint helpers call it so) and
        returns ``None``; without a closure otherwise, the one bound with :meth:`set_closure` is
        used.  ``grad_scaler`` (a ``torch.amp.GradScaler``): the optimizer's backward is scaled and
        the gradients unscaled (an inf/NaN one skips the step, as above); call
        ``grad_scaler.update()`` after the step as usual.
        """
        if self._init_call(closure):
            return None
        undo = self._begin_step()
        self._warn_external_writes()
        ev = self._evaluator(closure, grad_scaler)
        line: Line | None = None
        try:
            try:
                loss = ev.first()
            except NonFiniteLossError:
                return self._skip(ev, "start loss", torch.tensor(ev.loss0, device=ev.device), undo)
            if grad_scaler is not None:
                unscale_grads(grad_scaler, self)  # records the inf check for scaler.update()
            if not self._grads_finite(ev):
                return self._skip(ev, "gradient", loss, undo)
            first = self.param_groups[0]
            mu, alpha, s_max = first["measuring_step"], first["alpha"], first["max_step"]
            params = self._with_grad()
            grads = [[p.grad for p in ps] for ps in params]
            clip = self._clip_coef([g for gs in grads for g in gs], [p for ps in params for p in ps])
            if clip < 1.0:  # clipped copies; .grad stays as the closure left it
                grads = [list(torch._foreach_mul(gs, clip)) if gs else [] for gs in grads]
            new_bufs: list = []
            info: dict = {"loss": ev.loss0, "trials": 0, "clip": clip}
            dirs = []
            for group, ps, gs in zip(self.param_groups, params, grads):
                beta = group["momentum"]
                if beta > 0 and ps:
                    bufs = [self.state[p].get("momentum_buffer") for p in ps]
                    d = [g.clone() if b is None else torch.add(g, b, alpha=beta)
                         for g, b in zip(gs, bufs)]
                    new_bufs.append((ps, d))
                    dirs.append(d)
                else:
                    dirs.append(gs)
            sgrads, unclip = grads, clip
            if ev.slope_grads is not None:  # torch-style closure adding to accumulated grads
                by_id = {id(p): g for p, g in zip(ev.params, ev.slope_grads)}
                sgrads = [[by_id.get(id(p)) if by_id.get(id(p)) is not None else torch.zeros_like(p)
                           for p in ps] for ps in params]
                unclip = 1.0
            # ||d||^2 and <g, d>: local sums weighted for the shards of sharded (FSDP) parameters,
            # then rank-averaged like every decision scalar (global sums; one all-reduce)
            flat_d = [t for d in dirs for t in d]
            w = self.reducer.weights([p for ps in params for p in ps])
            # (scale-safe: recomputed in float64 where float32 over- or underflows, issue 11 item 9)
            norm_sq, g_dot_d = ev.reduce([sq_norm_float(flat_d, w),
                                          dot_float([g for gs in sgrads for g in gs], flat_d, w)])
            norm = math.sqrt(norm_sq) if norm_sq >= 0 else math.nan
            if not (norm > 0 and math.isfinite(norm)):
                s_upd, case, a, slope, f_mu = 0.0, "zero direction", math.nan, 0.0, math.nan
            else:
                # the slope is <g, d> with the unclipped gradient g = g_clipped / clip
                slope = -g_dot_d / norm / unclip
                line = Line(params, dirs)
                line.move([mu / norm] * len(params))
                f_mu = ev.trial()
                # the last closure call is behind us: from here on the step commits
                info["trials"] = 1
                s_upd, case, a = P.pal_step(ev.loss0, f_mu, slope, mu, alpha, s_max)
                if s_upd > 0:
                    line.move([s_upd / norm] * len(params))
                    self._decay([(ps, g["weight_decay"], s_upd / norm)
                                 for g, ps in zip(self.param_groups, params)], line.w0)
                else:
                    line.restore()
            for ps, d in new_bufs:
                for p, t in zip(ps, d):
                    self.state[p]["momentum_buffer"] = t
            lr = s_upd / norm if s_upd > 0 else 0.0
            for group in self.param_groups:
                group["lr"] = lr
            ls = self._ls
            ls["step"] += 1
            ls["forwards"] += ev.forwards
            ls["backwards"] += ev.backwards
            ls["trials"] += info["trials"]
            ls["update_length"] = s_upd
            if s_upd <= 0:
                ls["skipped"] += 1
            info.update(case=case, update_length=s_upd, lr=lr, a=a, b=slope, loss_mu=f_mu,
                        direction_norm=norm, forwards=ev.forwards, backwards=ev.backwards)
            self._note_written_lr()
            self.last_step = info
        except BaseException:
            self._abort_step(ev, undo, line)
            raise
        finally:
            self._close_step(ev, line)
        return loss
