"""The engine shared by the Armijo family (SLS, AdamSLS, SALSA, ALSALS, PLASLS).

A step is:

1. evaluate the closure once with grad and back-propagate (:class:`~autostep._closure.ClosureEvaluator`);
2. ask the subclass for a :class:`Plan`: per segment (param group, or layer for PLASLS) the search
   direction ``d``, the first-order decrease ``s = <g, d>`` per unit step, and optionally a *final*
   direction when the applied update differs from the searched one (AdamSLS: search with beta1 = 0,
   update with momentum, as the paper states);
3. backtrack from the start step size ``eta`` until the (smoothed, momentum-aware, per-layer)
   Armijo condition holds, each trial rebuilt exactly from ``w0`` (:class:`~autostep._line.Line`);
4. keep the accepted point (or apply the final direction with the accepted step size), or, when
   ``max_trials`` trials all fail, restore ``w0`` and skip the step.

Every decision is taken from rank-averaged scalars, so all ranks agree under ``torch.distributed``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from .._closure import ClosureEvaluator, NonFiniteLossError, unscale_grads
from .._line import Line, axpy_
from ..distributed import locals_
from . import _functional as F
from . import _validate as V
from ._adam import all_zero, dots
from ._common import AutostepOptimizer

__all__ = ["ArmijoOptimizer", "Plan", "Segment"]

#: searches before the amortised mode may start reusing the step size
AMORTIZE_WARMUP = 10
#: accepted searches in a row with a decrease below float rounding before the scale warning
STALL_SEARCHES = 10


@dataclass
class Segment:
    """Parameters that share one step size: a param group, or one layer of a group (PLASLS)."""

    group: dict
    params: list  # parameters of the segment that have a gradient this step
    grads: list
    name: str = ""
    layer: Optional[int] = None  # index into group["layer_lrs"] for per-layer step sizes

    @property
    def eta(self) -> float:
        """The search's own step size (before any scheduler cap)."""
        if self.layer is None:
            return self.group["step_size"]
        return self.group["layer_lrs"][self.layer]


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
                   weights: Optional[list] = None):
    """Per segment ``sum <x, y / den>`` (``den`` optional) as a 1-d tensor on the device.

    ``xs``, ``ys``, ``dens`` hold one tensor list per segment; the line's ``w0`` buffer (not yet
    saved) is the scratch, so no temporary is allocated.  DTensors enter through their local
    shards; ``weights`` (``Reducer.weights`` of the segments' parameters, one flat list; ``None``
    for all 1) scale each tensor's term so that the rank average of the sums is the global sum.

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
    if flat:
        torch._foreach_copy_(flat, [t for seg in ys for t in seg])
        if dens is not None:
            torch._foreach_div_(flat, [t for seg in dens for t in seg])
        torch._foreach_mul_(flat, [t for seg in xs for t in seg])
        if weights is not None:
            torch._foreach_mul_(flat, list(weights))
    return line.scratch_sums()


def _on_cpu(buf: list) -> bool:
    return all(t.device.type == "cpu" for seg in buf for t in seg)


def _slopes(ev: ClosureEvaluator, segs: list, dirs: list, reducer) -> torch.Tensor:
    """``<g_f, d>`` per segment (1-d tensor on the device), ``g_f`` the gradient of the loss the
    closure returns.

    Differs from the plan's ``<g, d>`` when a torch-style closure added its gradient to gradients
    accumulated before the step: the direction uses the accumulated gradient, the Armijo test the
    slope of the loss it evaluates.
    """
    by_id = {id(p): g for p, g in zip(ev.params, ev.slope_grads)}
    out = []
    for sg, d in zip(segs, dirs):
        num, den = d if isinstance(d, tuple) else (d, None)
        keep = [i for i, p in enumerate(sg.params) if by_id.get(id(p)) is not None]
        gs = [by_id[id(sg.params[i])] for i in keep]
        out.append(dots(gs, [num[i] for i in keep], None if den is None else [den[i] for i in keep],
                        reducer.weights([sg.params[i] for i in keep])))
    return torch.stack([t.to(out[0].device) for t in out])


class ArmijoOptimizer(AutostepOptimizer):
    """Base class; see the subclasses for the documented algorithms.

    Counters (cumulative, in ``state_dict``): :attr:`forwards`, :attr:`backwards`, :attr:`trials`,
    :attr:`skipped_steps`; the last step's details are in :attr:`last_step`.  The current step size
    of group ``i`` is ``param_groups[i]["lr"]`` (also :attr:`step_size` for the first group).

    Learning-rate schedulers: see "Step size and schedulers" in the subclasses' docstrings (a value
    written into ``group["lr"]`` caps the step size; the search is never restarted from it).
    """

    #: hyper-parameters that must have one value across all param groups
    _shared: tuple = ("max_trials",)
    #: per-segment criterion (PLASLS) instead of one joint criterion
    _per_segment: bool = False
    #: eq. 9 of the ALSALS paper (c_h switch)
    _momentum_aware: bool = False

    def __init__(self, params, defaults: dict):
        super().__init__(params, defaults, {
            "step": 0,
            "forwards": 0,
            "backwards": 0,
            "trials": 0,
            "skipped": 0,
            "searches": 0,
            "since_search": 0,
            "interval": 1,
            "h_ema": 0.0,
            "s_ema": [],
            "ema_count": 0,
            "log_eta_fast": None,
            "log_eta_slow": None,
            "warned_no_grad": False,
            "stalled": 0,
        })

    def _group_added(self, group: dict) -> None:
        # step_size: the search's own step size; applied_lr: the value the optimizer last wrote into
        # group["lr"] (group["lr"] differing from it means a scheduler or the user wrote a rate, which
        # becomes lr_cap until the next write)
        group.setdefault("step_size", group["lr"])
        group.setdefault("applied_lr", group["lr"])
        group.setdefault("lr_cap", None)

    def _validate_group(self, group: dict) -> None:
        # a loaded group may hold a scheduler's value (a cap, 0 during a warm-up, above max_lr)
        (V.nonnegative if self._loading else V.positive)("lr", group["lr"])
        V.open_unit("c", group["c"], " (the Armijo constant)")
        V.open_unit("backtrack", group["backtrack"], " (the factor a rejected step size is multiplied by)")
        V.positive("growth_steps", group["growth_steps"])
        V.positive("max_lr", group["max_lr"])
        V.nonnegative("min_lr", group["min_lr"])
        if group["min_lr"] > group["max_lr"]:
            raise ValueError(f"min_lr ({group['min_lr']}) must not exceed max_lr ({group['max_lr']})")
        if group["lr"] > group["max_lr"] and not self._loading:
            raise ValueError(f"lr ({group['lr']}) must not exceed max_lr ({group['max_lr']}); raise max_lr")
        V.positive_int("max_trials", group["max_trials"])
        V.choice("reset", group["reset"], ("growth", "double", "none"))
        V.positive_int("reset_every", group["reset_every"])

    def _validate_loaded_group(self, index: int, group: dict) -> None:
        """The search's own step size (and PLASLS's layers) of a loaded group."""
        if "step_size" in group:
            V.nonnegative(f"param group {index} step_size", group["step_size"])
        layers, lrs = group.get("layers"), group.get("layer_lrs")
        if layers is None and lrs is None:
            return
        n = len(group["params"])
        if not isinstance(layers, list) or not isinstance(lrs, list) or len(layers) != len(lrs):
            raise ValueError(f"param group {index}: 'layers' and 'layer_lrs' must be lists of the "
                             f"same length, got {layers!r} and {lrs!r}")
        flat = sorted(i for idx in layers for i in idx)
        if flat != list(range(n)):
            raise ValueError(f"param group {index}: 'layers' must split the group's {n} parameters "
                             f"into layers, got {layers!r}")
        for j, e in enumerate(lrs):
            V.positive(f"param group {index} layer_lrs[{j}]", e)

    # ------------------------------------------------------------------ public read-outs
    @property
    def skipped_steps(self) -> int:
        """Steps that left the parameters unchanged: the search exhausted ``max_trials``, or the
        start loss or gradient was not finite (those also count in :attr:`nonfinite_steps`)."""
        return self._ls["skipped"]

    @property
    def step_size(self) -> float:
        """Current step size of the first param group (``param_groups[0]["lr"]``)."""
        return self.param_groups[0]["lr"]

    # ------------------------------------------------------------------ subclass interface
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

    def _plan(self, segs: list[Segment], need_s: bool = True,
              line: Optional[Line] = None) -> Plan:  # pragma: no cover - abstract
        """Directions of the step, changing no state; ``need_s=False`` may leave ``Plan.s`` ``None``
        (reused step size).  ``line`` (not yet saved) lends its buffer as scratch
        (:func:`decrease_terms`); it is ``None`` when no search follows."""
        raise NotImplementedError

    def _smoothing(self) -> float:
        """EMA factor of the smoothed criterion, 0 for the plain Armijo condition."""
        return 0.0

    def _amortize(self) -> int:
        """Largest number of steps between searches, 0/1 to search every step."""
        return 0

    # ------------------------------------------------------------------ step-size bookkeeping
    def _start_eta(self, group: dict, eta: float, since: int) -> float:
        """Step size the search starts from (growth/reset rule, then the caps)."""
        if group["reset"] == "growth":
            eta = F.grow(eta, group["growth_steps"], since)
        elif group["reset"] == "double" and self._ls["step"] % group["reset_every"] == 0:
            eta = eta * 2.0
        return min(max(eta, group["min_lr"]), group["max_lr"])

    def _sync_external_lr(self) -> None:
        """A value written into ``group['lr']`` from outside (scheduler, user) becomes the cap."""
        for group in self.param_groups:
            if group["lr"] != group["applied_lr"]:
                V.nonnegative("lr (written by a scheduler or by hand)", group["lr"])
                group["lr_cap"] = float(group["lr"])
                group["applied_lr"] = group["lr"]

    def _cap_scales(self, segs: list[Segment], starts: list[float]) -> list[float]:
        """Per segment, the factor ``q <= 1`` that brings its group under ``lr_cap``.

        A group's step size is compared with the cap: one segment's step size, or the geometric
        mean of its layers' (PLASLS), which are all scaled alike.
        """
        logs: dict = {}
        for sg, e in zip(segs, starts):
            logs.setdefault(id(sg.group), []).append(math.log(max(e, 1e-300)))
        qs = []
        for sg in segs:
            cap = sg.group.get("lr_cap")
            if cap is None:
                qs.append(1.0)
                continue
            ls_ = logs[id(sg.group)]
            gm = math.exp(sum(ls_) / len(ls_))
            qs.append(min(1.0, cap / gm) if gm > 0 else 1.0)
        return qs

    def _set_eta(self, seg: Segment, eta: float) -> None:
        """Store the search's own step size of a segment."""
        if seg.layer is None:
            seg.group["step_size"] = eta
        else:
            seg.group["layer_lrs"][seg.layer] = eta

    def _publish_lr(self, segs: list[Segment], applied: list[float]) -> None:
        """``group["lr"]``: the step size applied this step (geometric mean over a group's layers)."""
        logs: dict = {}
        for sg, e in zip(segs, applied):
            logs.setdefault(id(sg.group), []).append(math.log(max(e, 1e-300)))
        for group in self.param_groups:
            if id(group) in logs:
                ls_ = logs[id(group)]
                group["lr"] = math.exp(sum(ls_) / len(ls_)) if len(ls_) > 1 else math.exp(ls_[0])

    def _finish_groups(self) -> None:
        """Hook after step sizes changed (PLASLS recomputes the group's summary lr)."""

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None,
             grad_scaler=None) -> torch.Tensor:
        """Take one step; ``closure`` returns the mini-batch loss (see the class docstring).

        Returns the loss at the start point (the closure's first evaluation, detached).
        ``step(None)`` with all-zero gradients only creates the state (torch's distributed
        checkpoint helpers call it so) and returns ``None``; otherwise it uses the closure bound
        with :meth:`set_closure`.  ``grad_scaler``: see "Mixed precision" in the class docstring.

        A step whose start loss or gradient is NaN/inf is skipped before anything changes
        (:attr:`skipped_steps`, :attr:`nonfinite_steps`, a ``RuntimeWarning``).  A step that raises
        (an exception or ``KeyboardInterrupt`` in the closure, a broken closure contract) leaves
        the optimizer as it was before the call: parameters, moments, counters, EMAs, step sizes,
        ``.grad``, module buffers and the random generators.
        """
        if self._init_call(closure):
            return None
        undo = self._begin_step()
        ev = self._evaluator(closure, grad_scaler)
        ls = self._ls
        info: dict = {"loss": None, "trials": 0, "searched": False, "accepted": False,
                      "skipped": None}
        line: Line | None = None
        scale_note: str | None = None  # why nothing moved, when an extreme loss scale is the cause
        try:
            # forward + backward; the start loss stays on the device until the one read below
            loss = ev.first(read=False)
            if grad_scaler is not None:
                # unscale and record the inf check in the scaler (for its update()); an inf/NaN
                # gradient is then skipped below before any state changes
                unscale_grads(grad_scaler, self)
            segs = self._segments(ev)
            self._check_grads(segs)
            clip = self._clip_coef([g for sg in segs for g in sg.grads],
                                   [p for sg in segs for p in sg.params])
            if clip < 1.0:  # clipped copies: .grad itself is left as the closure made it
                for sg in segs:
                    sg.grads = list(torch._foreach_mul(sg.grads, clip)) if sg.grads else []
            info["clip"] = clip
            k_max = self._amortize()
            since = ls["since_search"] + 1
            reuse = (
                k_max > 1
                and ls["searches"] >= AMORTIZE_WARMUP
                and since < ls["interval"]
            )
            if not reuse and any(sg.params for sg in segs):
                # the buffer for w0, lent to the plan as scratch until it is saved
                line = Line([sg.params for sg in segs], [None] * len(segs), save=False)
            # a step that reuses the step size needs no decrease terms (no search, no EMA update):
            # its plan is made after the read, from moments committed first (fewer passes)
            plan = None if reuse else self._plan(segs, need_s=True, line=line)
            if plan is None:
                pass
            elif plan.s is not None and ev.slope_grads is not None:
                plan.s = _slopes(ev, segs, plan.search, self.reducer)
            elif plan.s is not None and clip < 1.0:
                # the Armijo slope is <g, d> with the unclipped g = g_clipped / clip
                plan.s = plan.s / clip
            # the one host read before the trials: start loss and decrease terms together (and,
            # when no decrease term is computed, the gradients' finiteness)
            extra = plan.s if plan is not None and plan.s is not None else V.tensor_list_finite(
                [g for sg in segs for g in sg.grads]).reshape(1)
            try:
                s = ev.read_start(extra)
            except NonFiniteLossError:
                # the first evaluation was undone (buffers, generators, .grad): skip the step
                return self._skip(ev, "start loss", loss, undo)
            info["loss"] = ev.loss0
            if not all(math.isfinite(si) for si in s) and not self._grads_finite(ev):
                # an inf/NaN gradient (GradScaler overflow): skip before any state changes
                return self._skip(ev, "gradient", loss, undo)
            if plan is None:
                self._commit_now = True
                try:
                    plan = self._plan(segs, need_s=False, line=None)
                finally:
                    self._commit_now = False
            if plan.s is None:
                s = []
            ls["step"] += 1
            self._sync_external_lr()
            if not any(sg.params for sg in segs):
                info["skipped"] = "no gradients"
            elif not all(math.isfinite(si) for si in s):
                # finite gradients whose decrease term overflows: an extreme loss scale
                scale_note = "the first-order decrease <g, d> overflows the float range"
                info["skipped"] = "decrease term overflow"
                ls["skipped"] += 1
                plan.commit()
            elif reuse:
                # amortised mode: reuse the settled step size (under the cap), no trial forward
                plan.commit()
                applied = [sg.eta * q for sg, q in zip(segs, self._cap_scales(segs, [sg.eta for sg in segs]))]
                self._decay([(sg.params, sg.group["weight_decay"], e) for sg, e in zip(segs, applied)])
                self._apply_final(plan, segs, applied, line=None)
                self._publish_lr(segs, applied)
                ls["since_search"] = since
                info.update(accepted=True, reused=True)
            elif all(si == 0.0 and (plan.exact_zero is None or plan.exact_zero(j))
                     for j, si in enumerate(s)):
                plan.commit()
                info["skipped"] = "zero direction"
                # a zero direction at a loss of ordinary size is a zero gradient; far from it
                # (and only then: it costs a read) check whether g^2 under- or overflowed
                if (not 1e-12 <= abs(ev.loss0) <= 1e12
                        and not all_zero([g for sg in segs for g in sg.grads])):
                    scale_note = ("the search direction and its decrease term are zero although the "
                                  "gradient is not (g^2 underflows or overflows float32)")
            else:
                zero = [si == 0.0 and (plan.exact_zero is None or plan.exact_zero(j))
                        for j, si in enumerate(s)]
                free = [self._start_eta(sg.group, sg.eta, since) for sg in segs]
                qs = self._cap_scales(segs, free)
                starts = [max(e * q, sg.group["min_lr"]) for sg, e, q in zip(segs, free, qs)]
                etas = list(starts)
                line.save()
                line.exclusive = True  # only this step moves the parameters until release()
                line.set_dirs(plan.search)
                accepted, etas, trials, dec = self._search(ev, line, segs, etas, s, zero)
                # the last closure call is behind us: from here on the step commits
                info.update(searched=True, trials=trials, accepted=accepted, decrease=dec)
                plan.commit()
                ls["searches"] += 1
                ls["since_search"] = 0
                for sg, eta, st, fr in zip(segs, etas, starts, free):
                    # under a cap the search keeps its own step size, lowered only by the factor
                    # it had to backtrack from the capped start (a cap accepted as it is tells
                    # nothing about larger steps; a search restarted from the cap would collapse
                    # during a warm-up)
                    own = eta if st == fr or st <= 0 else eta * fr / st
                    self._set_eta(sg, min(max(own, sg.group["min_lr"]), sg.group["max_lr"]))
                self._publish_lr(segs, etas)
                if accepted:
                    # steps whose first-order decrease is below the loss's float rounding move
                    # nothing measurable; ten searches in a row of them are worth a warning
                    pred = sum(e * abs(si) for e, si in zip(etas, s))
                    stalled = pred <= 4.0 * ev.loss_eps * abs(ev.loss0)
                    ls["stalled"] = ls.get("stalled", 0) + 1 if stalled else 0
                    if ls["stalled"] >= STALL_SEARCHES:
                        scale_note = (f"for {STALL_SEARCHES} searches in a row the accepted steps' "
                                      "first-order decrease was below the loss's float rounding "
                                      "(a loss scaled far below 1, or step sizes capped by max_lr "
                                      "or a scheduler)")
                    if plan.final is not None:
                        self._apply_final(plan, segs, etas, line)
                    self._decay([(sg.params, sg.group["weight_decay"], e)
                                 for sg, e in zip(segs, etas)], line.w0)
                    self._update_amortize(segs[0].eta, k_max)
                else:
                    line.restore()
                    ls["skipped"] += 1
                    ls["interval"] = 1
                    info["skipped"] = "max_trials exhausted"
                    if all(e <= sg.group["min_lr"] for e, sg in zip(etas, segs)):
                        scale_note = (f"every step size down to min_lr={segs[0].group['min_lr']:g} "
                                      "was rejected (with a loss scaled by 1e10 or more the step "
                                      "sizes needed are below it: lower min_lr or rescale)")
            self._finish_groups()
            for group in self.param_groups:
                group["applied_lr"] = group["lr"]
        except BaseException:
            if line is not None:
                line.restore()
            ev.abort()
            undo.restore(self)
            raise
        finally:
            ev.finish()
            if line is not None:
                line.release()
        ls["forwards"] += ev.forwards
        ls["backwards"] += ev.backwards
        ls["trials"] += info["trials"]
        info.update(forwards=ev.forwards, backwards=ev.backwards,
                    step_sizes=[g["lr"] for g in self.param_groups])
        self.last_step = info
        if scale_note is not None:
            info["scale"] = scale_note
            self._warn_scale(scale_note)
        return loss

    def _apply_final(self, plan: Plan, segs: list[Segment], etas: list[float], line: Line | None) -> None:
        dirs = plan.final if plan.final is not None else plan.search
        scales = [plan.final_scale(j, eta) if plan.final_scale else eta for j, eta in enumerate(etas)]
        if line is not None:
            line.move(scales, dirs)
        else:
            for sg, d, sc in zip(segs, dirs, scales):
                axpy_(sg.params, d, sc)

    def _update_amortize(self, eta: float, k_max: int) -> None:
        if k_max <= 1:
            return
        ls = self._ls
        le = math.log(max(eta, 1e-300))
        if ls["log_eta_fast"] is None or ls["searches"] <= AMORTIZE_WARMUP:
            # the first searches move eta by orders of magnitude (backtracking from the initial
            # guess); drift is measured from the end of this warm-up on
            ls["log_eta_fast"] = ls["log_eta_slow"] = le
        ls["log_eta_fast"] = F.ema(ls["log_eta_fast"], le, 0.9)
        ls["log_eta_slow"] = F.ema(ls["log_eta_slow"], le, 0.99)
        drift = abs(ls["log_eta_fast"] - ls["log_eta_slow"])
        ls["interval"] = F.amortize_interval(drift, k_max)

    def _search(self, ev: ClosureEvaluator, line: Line, segs: list[Segment], etas: list[float],
                s: list[float], zero: list[bool]) -> tuple[bool, list[float], int, float]:
        """Backtracking; returns (accepted, step sizes, number of trials, last decrease)."""
        ls = self._ls
        groups = [sg.group for sg in segs]
        cs = [g["c"] for g in groups]
        bts = [g["backtrack"] for g in groups]
        mins = [g["min_lr"] for g in groups]
        max_trials = groups[0]["max_trials"]
        beta = self._smoothing()
        if beta > 0:
            if len(ls["s_ema"]) != len(s):
                ls["s_ema"] = [0.0] * len(s)
            s_used = [F.ema(prev, si, beta) for prev, si in zip(ls["s_ema"], s)]
            ls["s_ema"] = s_used
            ls["ema_count"] += 1
        else:
            s_used = s
        f0 = ev.loss0
        # Below the loss's own rounding a comparison of decreases is meaningless: near a minimum the
        # sufficient decrease drops under float resolution and a strict test would reject every
        # size, collapsing eta to min_lr.  Differences within a few ulps of f0 count as equal.
        tol = 4.0 * ev.loss_eps * abs(f0)
        etas = list(etas)
        for t in range(1, max_trials + 1):
            line.move(etas)
            f = ev.trial()
            dec = f0 - f
            if self._per_segment:
                holds = [
                    z or F.armijo_holds(dec + tol, F.armijo_rhs([c], [e], [si], self._momentum_aware))
                    for z, c, e, si in zip(zero, cs, etas, s_used)
                ]
                ok = all(holds)
            else:
                lhs = F.ema(ls["h_ema"], dec, beta) if beta > 0 and math.isfinite(dec) else dec
                rhs = F.armijo_rhs(cs, etas, s_used, self._momentum_aware)
                ok = F.armijo_holds(lhs + tol, rhs)
                holds = [ok] * len(etas)
            if ok:
                if beta > 0:
                    ls["h_ema"] = lhs
                return True, etas, t, dec
            new = [e if h else max(e * b, m) for e, h, b, m in zip(etas, holds, bts, mins)]
            if t == max_trials or new == etas:  # exhausted, or every failing size sits at min_lr
                break
            etas = new
        return False, etas, t, dec
