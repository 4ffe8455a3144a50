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

The parts live in their own modules: segments, plans and decrease terms in
:mod:`~autostep.optim._armijo_plan`, the step-size rules in
:mod:`~autostep.optim._armijo_step_sizes`, the backtracking loop in
:mod:`~autostep.optim._armijo_search`; this module holds the engine's ``step``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .._closure import NonFiniteLossError, unscale_grads
from .._line import Line
from .. import _validate as V
from ._armijo_plan import Plan, Segment, Segments, decrease_terms, slopes
from ._armijo_search import BacktrackingSearch
from ._armijo_step_sizes import AMORTIZE_WARMUP, StepSizes
from ._optimizer import AutostepOptimizer
from ._reductions import all_zero
from ._state import ls_property

__all__ = ["ArmijoOptimizer", "Plan", "Segment", "decrease_terms"]

#: accepted searches in a row with a decrease below float rounding before the scale warning
STALL_SEARCHES = 10


class ArmijoOptimizer(Segments, StepSizes, BacktrackingSearch, AutostepOptimizer):
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
    #: per-parameter state (Adam moments) changes only in Plan.commit, after the last trial
    _state_before_commit: bool = False

    #: the smoothed criterion's and the amortised mode's state, which older versions kept for
    #: every Armijo optimizer (``_Smoothed`` keeps it; the others drop it when loading)
    _legacy_ls = {key: None for key in ("since_search", "interval", "log_eta_fast",
                                        "log_eta_slow", "h_ema", "s_ema", "ema_count")}

    def __init__(self, params, defaults: dict):
        super().__init__(params, defaults, self._initial_ls())

    def _initial_ls(self) -> dict:
        """The optimizer-level state of a fresh optimizer: only the keys this class uses."""
        return {
            "step": 0,
            "forwards": 0,
            "backwards": 0,
            "trials": 0,
            "skipped": 0,
            "searches": 0,
            "warned_no_grad": False,
            "stalled": 0,
        }

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
        """The search's own step size of a loaded group."""
        if "step_size" in group:
            V.nonnegative(f"param group {index} step_size", group["step_size"])

    # ------------------------------------------------------------------ public read-outs
    skipped_steps = ls_property("skipped", "Steps that left the parameters unchanged: the search "
                                           "exhausted ``max_trials``, or the start loss or "
                                           "gradient was not finite (those also count in "
                                           ":attr:`nonfinite_steps`).")

    @property
    def step_size(self) -> float:
        """Current step size of the first param group (``param_groups[0]["lr"]``)."""
        return self.param_groups[0]["lr"]

    # ------------------------------------------------------------------ subclass interface
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

    def _reuse_update(self, segs: list[Segment], applied: list[float]) -> None:
        """A reused step (amortised mode; nothing can fail any more): the plan made from moments
        committed first (fewer passes than a searched step's), applied with the step sizes
        ``applied``.  The Adam direction overrides it with one fused kernel."""
        self._commit_now = True
        try:
            plan = self._plan(segs, need_s=False, line=None)
        finally:
            self._commit_now = False
        plan.commit()
        self._apply_final(plan, segs, applied, line=None)

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
        ``.grad``, module buffers and the random generators (the gradients the previous step
        left, unchanged since, are released before the forward and stay ``None``).
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
        scale_advice: str | None = None  # what to do about it, when not the loss-scale advice
        try:
            # forward + backward; the start loss stays on the device until the one read below
            loss = ev.first(read=False)
            if grad_scaler is not None:
                # unscale and record the inf check in the scaler (for its update()); an inf/NaN
                # gradient is then skipped below before any state changes
                unscale_grads(grad_scaler, self)
            segs = self._segments(ev)
            self._check_grads(segs)
            # max_grad_norm: the coefficient stays on the device (read with the other scalars);
            # clipped copies (times 1 when within the norm): .grad is left as the closure made it
            raw = [sg.grads for sg in segs]
            clipping = self._clip_coef_device([g for gs in raw for g in gs],
                                              [p for sg in segs for p in sg.params])
            clip_t = None if clipping is None else clipping[0]
            if clip_t is not None:
                for sg in segs:
                    sg.grads = list(torch._foreach_mul(sg.grads, clip_t)) if sg.grads else []
            info["clip"] = 1.0
            k_max = self._amortize()
            since = ls.get("since_search", 0) + 1  # steps since the last search (amortised mode)
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
                plan.s = slopes(ev, segs, plan.search, self.reducer, line)
            elif plan.s is not None and clip_t is not None:
                # the Armijo slope is <g, d> with the unclipped g = g_clipped / clip
                plan.s = plan.s / clip_t
            # the one host read before the trials: start loss and decrease terms together (and,
            # when no decrease term is computed, the gradients' finiteness; with max_grad_norm,
            # the clipping coefficient and the squared norm)
            # (a non-finite hint is confirmed exactly by _grads_finite below)
            extra = plan.s if plan is not None and plan.s is not None else V.finite_hint(
                [g for sg in segs for g in sg.grads]).reshape(1)
            if clipping is not None:
                extra = torch.cat([extra.reshape(-1).to(torch.float64),
                                   torch.stack(clipping).to(extra.device)])
            try:
                s = ev.read_start(extra, trials=not reuse)
            except NonFiniteLossError:
                # the first evaluation was undone (buffers, generators, .grad): skip the step
                return self._skip(ev, "start loss", loss, undo)
            info["loss"] = ev.loss0
            if clipping is not None:
                s, (clip, sq) = s[:-2], s[-2:]
                if sq == 0.0 or math.isinf(sq):
                    # float32 squares under- or overflowed: the exact coefficient (float64 norms)
                    exact = self._clip_coef([g for gs in raw for g in gs],
                                            [p for sg in segs for p in sg.params])
                    if exact != clip:
                        clip = exact
                        plan, s = self._replan_clipped(ev, segs, raw, clip, plan is None, line)
                info["clip"] = clip
            if not all(math.isfinite(si) for si in s) and not self._grads_finite(ev):
                # an inf/NaN gradient (GradScaler overflow): skip before any state changes
                return self._skip(ev, "gradient", loss, undo)
            if plan is None or plan.s is None:
                s = []
            ls["step"] += 1
            self._sync_external_lr()
            if not any(sg.params for sg in segs):
                info["skipped"] = "no gradients"
            elif not all(math.isfinite(si) for si in s):
                # finite gradients whose decrease term overflows: an extreme loss scale, or Adam
                # denominators of float16 parameters that are 0 (g^2 and eps underflow)
                half = _half_note(plan)
                scale_note = half or "the first-order decrease <g, d> overflows the float range"
                scale_advice = HALF_ADVICE if half else None
                info["skipped"] = "decrease term overflow"
                ls["skipped"] += 1
                plan.commit()
            elif reuse:
                # amortised mode: reuse the settled step size (under the cap), no trial forward
                applied = [sg.eta * q for sg, q in zip(segs, self._cap_scales(segs, [sg.eta for sg in segs]))]
                self._decay([(sg.params, sg.group["weight_decay"], e) for sg, e in zip(segs, applied)])
                self._reuse_update(segs, applied)
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
                if "since_search" in ls:  # amortised mode (SALSA, ALSALS)
                    ls["since_search"] = 0
                for sg, eta, st, fr in zip(segs, etas, starts, free):
                    # under a cap the search keeps its own step size, lowered only by the factor
                    # it had to backtrack from the capped start (a cap accepted as it is tells
                    # nothing about larger steps; a search restarted from the cap would collapse
                    # during a warm-up)
                    own = eta if st == fr or st <= 0 else eta * fr / st
                    sg.eta = min(max(own, sg.group["min_lr"]), sg.group["max_lr"])
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
                    self._update_amortize(segs[0].eta, k_max, trials)
                else:
                    line.restore()
                    ls["skipped"] += 1
                    if "interval" in ls:  # amortised mode: search again at the next step
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
            self._abort_step(ev, undo, line)
            raise
        finally:
            self._close_step(ev, line)
        ls["forwards"] += ev.forwards
        ls["backwards"] += ev.backwards
        ls["trials"] += info["trials"]
        info.update(forwards=ev.forwards, backwards=ev.backwards,
                    step_sizes=[g["lr"] for g in self.param_groups])
        self.last_step = info
        if scale_note is not None:
            info["scale"] = scale_note
            self._warn_scale(scale_note, scale_advice)
        return loss


#: why an Adam-direction step of float16 parameters is skipped (issue 13: it named a loss scale)
HALF_NOTE = (
    "the first-order decrease <g, d> is not finite in float16 arithmetic but is in float32: "
    "float16's range is too narrow for Adam's second moment (1 - beta2) g^2 (with beta2=0.999 it "
    "is 0 for |g| below ~5e-3 and inf above ~8e3){eps_clause}"
)
#: what to do about it (the warning's advice in place of the loss-scale one)
HALF_ADVICE = ("Keep the parameters in float32 and run the model under torch.autocast (mixed "
               "precision); with float16 parameters pass eps=1e-4 or more and keep the gradients' "
               "scale moderate.")


def _half_note(plan) -> str | None:
    """:data:`HALF_NOTE` when the plan's Adam moments are float16 and the decrease terms that were
    not finite are finite when recomputed in float32 (``sum g^2 / denom``; the float16 range is
    the cause, not the loss scale), else ``None``.  Runs only for a step that is being skipped."""
    halves = [mo for mo in (plan.moments if plan is not None else [])
              if mo.params and any(v.dtype == torch.float16 for v in mo.vs)]
    if not halves:
        return None
    for mo in halves:
        total = 0.0
        for v, g, k in zip(mo.vs, mo.grads, mo.steps):
            g32 = g.float()
            v_new = v.float() * mo.b2 + (1.0 - mo.b2) * g32 * g32
            den = (v_new / (1.0 - mo.b2 ** k)).sqrt() + mo.eps
            total += float((g32 * g32 / den).sum())
        if not math.isfinite(total):
            return None  # not finite in float32 either: an extreme loss scale
    eps = halves[0].eps
    clause = (f", and eps={eps:g} is below its smallest normal number 6.1e-05" if eps < 6.1e-5
              else "")
    return HALF_NOTE.format(eps_clause=clause)
