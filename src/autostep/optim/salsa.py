"""SALSA (smoothed Armijo) and ALSALS (momentum-aware Armijo along the Adam direction)."""

from __future__ import annotations

from typing import Optional

import torch

from .. import _validate as V
from .._grad_mode import no_grad
from ._adam_direction import AdamDirection
from .._lean import Rebuilt
from ._armijo import ArmijoOptimizer, Plan, Segment, decrease_terms
from ._armijo_plan import flat_weights, sq_norm_terms
from ._docs import ARMIJO_DOC

__all__ = ["SALSA", "ALSALS"]

_AMORTIZE_DOC = """
    Amortised mode (``amortize=k``, off by default)
        After the first 10 searches, the step size is reused without a trial forward for up to
        ``k`` steps between searches.  The interval follows what each search found: it doubles
        (up to ``k``) when the grown step size was accepted at the first trial, stays after one
        backtrack, and halves after more.  A guard resets it to 1 while the step size drifts: the
        distance between a fast (0.9) and a slow (0.99) EMA of ``log eta`` taken at the searches
        above 50 % (the published SaLSa's "speed_up" idea, in log space).  A step that reuses the
        step size costs one forward and one backward plus Adam's update in torch's fused kernel
        (where it exists: CPU from torch 2.4, CUDA), so about a plain Adam step; the growth owed for
        the skipped steps is applied at the next search.  ``last_step["reused"]`` tells which steps
        reused it.
"""


class _Smoothed(ArmijoOptimizer):
    """SALSA's and ALSALS's smoothed criterion and amortised mode, and the state they keep."""

    _shared = ("max_trials", "smooth", "amortize")
    _legacy_ls: dict = {}

    def _initial_ls(self) -> dict:
        return dict(super()._initial_ls(),
                    since_search=0, interval=1,  # amortised mode: steps since the search, and allowed
                    log_eta_fast=None, log_eta_slow=None,  # its EMAs of log eta (None: not yet)
                    h_ema=0.0, s_ema=[], ema_count=0)  # the smoothed criterion's EMAs

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        V.half_open_unit("smooth", group["smooth"], " (0 turns smoothing off)")
        if isinstance(group["amortize"], bool) or not isinstance(group["amortize"], int) or group["amortize"] < 0:
            raise ValueError(f"amortize must be an integer >= 0 (0 = off), got {group['amortize']!r}")

    def _smoothing(self) -> float:
        return self.param_groups[0]["smooth"]

    def _amortize(self) -> int:
        return self.param_groups[0]["amortize"]

    @property
    def smoothed_terms(self) -> dict:
        """Current EMAs of the decrease ``h`` and of the sufficient-decrease terms ``s`` (one per
        param group), bias-corrected as in Adam (the correction cancels in the criterion)."""
        ls, beta = self._ls, self._smoothing()
        n = ls["ema_count"]
        from ._functional import bias_corrected
        return {"h": bias_corrected(ls["h_ema"], beta, n),
                "s": [bias_corrected(s, beta, n) for s in ls["s_ema"]], "count": n}


class SALSA(AdamDirection, _Smoothed):
    __doc__ = """Smoothed Armijo line search (SALSA, the slides' eq. 3-5).

    The decrease ``h_k = f(w) - f(w - eta d)`` and the sufficient-decrease term ``s_k`` are replaced
    by exponential moving averages, ``h_hat_k = beta h_hat_{k-1} + (1 - beta) h_k`` (same for
    ``s``), and the step is accepted when

        h_hat_k >= c * eta * s_hat_k .

    The bias correction ``1/(1 - beta^k)`` of both EMAs is applied (and reported in
    :attr:`smoothed_terms`); it cancels in the inequality.  One trial forward per step in the common
    case: the step size grows slowly (``2**(1/b)``) while the smoothed criterion holds.  When it fails
    the step size shrinks by ``backtrack`` and the smaller step is *tested again* with a new forward,
    ``h_k`` in the EMA being replaced (not appended) by the new trial's decrease -- so the point
    applied is always a tested point (deviation from the slides, which lower ``eta`` without a new
    forward and apply an untested step; our rule keeps autostep's "tested = applied" guarantee and
    matches the published SaLSa code).  ``s_hat`` takes one update per step.

    Directions
        ``direction="adam"`` (default): search along Adam with beta1 = 0 and the preconditioned
        gradient norm, update with momentum (as :class:`AdamSLS`).  ``direction="sgd"``: -g and
        ``||g||^2`` (as :class:`SLS`).

    Parameters
        lr (0.1), c (0.5), smooth (0.9): the slides give no values; c = 0.5 and beta = 0.9 are the
            published SaLSa code's defaults.
        backtrack (0.9), growth_steps (500), reset, reset_every, min_lr, max_trials: as :class:`SLS`
            (the published code grows by 1.1 per step and backtracks by 0.8; we keep the ALSALS
            paper's 2**(1/500) so that one forward per step is the common case).
        max_lr (1.0), betas ((0.9, 0.999)), eps (1e-8), memory ("fast"): as :class:`AdamSLS`.
        amortize (0): see below.
    """ + _AMORTIZE_DOC + ARMIJO_DOC

    _shared = ("max_trials", "smooth", "amortize", "direction", "memory")

    def __init__(self, params, lr: float = 0.1, *, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, max_grad_norm: Optional[float] = None, c: float = 0.5,
                 smooth: float = 0.9, direction: str = "adam", backtrack: float = 0.9,
                 growth_steps: float = 500, reset: str = "growth", reset_every: int = 300,
                 max_lr: float = 1.0, min_lr: float = 1e-10, max_trials: int = 50,
                 amortize: int = 0, memory: str = "fast"):
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
            c=c, smooth=smooth, direction=direction, backtrack=backtrack, growth_steps=growth_steps,
            reset=reset, reset_every=reset_every, max_lr=max_lr, min_lr=min_lr,
            max_trials=max_trials, amortize=amortize, memory=memory))

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        V.choice("direction", group["direction"], ("adam", "sgd"))
        self._validate_adam(group)

    def _plan(self, segs: list[Segment], need_s: bool = True, line=None) -> Plan:
        if self.param_groups[0]["direction"] == "sgd":
            return Plan(search=[sg.grads for sg in segs],
                        s=sq_norm_terms(segs, self.reducer) if need_s else None)
        return self._plan_precond(segs, need_s, line)


class ALSALS(AdamDirection, _Smoothed):
    __doc__ = """Armijo along the actual Adam direction with the momentum-aware decrease term (ALSALS).

    ALSALS paper eq. 6-9.  The search direction is Adam's real update direction, momentum included,
    ``d = m_hat / (sqrt(v_hat) + eps)``, so the point tested is the point applied.  The squared
    gradient norm of the Armijo condition is replaced by ``f_a``, the first-order loss decrease per
    unit step along ``d``, and the constant by ``c_h = c`` if ``f_a > 0`` else ``1/c`` (eq. 8):

        f(w) - f(w - eta d) >= c_h * eta * f_a .                     (eq. 9)

    ``f_a`` is computed exactly as the directional derivative ``<g, d>`` from the gradient already at
    hand (no extra forward).  The paper's eq. 6 estimates it by a finite difference with
    ``epsilon = 5e-8``, which costs a forward and, in float32, is off by a median 13 % (digits MLP) and
    3 % (Fashion-MNIST MLP) against ``<g, d>``, while the same difference in float64 agrees to 1e-5
    (``python benchmarks/fa_estimate.py``): the formula is fine, float32 rounding is not.

    Caveat (measured, see the README): on small noisy batches the momentum direction is often nearly
    orthogonal to the batch gradient, ``f_a`` is then close to 0, and eq. 9 admits only tiny steps;
    the step size drifts down (1e-4 to 1e-5 on the Fashion-MNIST MLP).  ``smooth=0.9`` avoids it.

    Smoothing as in :class:`SALSA` is available with ``smooth=beta`` (off by default, as in the paper);
    then the EMAs of the decrease and of ``f_a`` enter eq. 9 and ``c_h`` switches on the sign of the
    smoothed ``f_a``.

    Parameters
        lr (0.1): initial step size.  c (0.6): the paper's value (it reports 0.3-0.7 as good).
        smooth (0.0), amortize (0): see above and below.
        backtrack (0.9), growth_steps (500), reset, reset_every, min_lr, max_trials: as :class:`SLS`.
        max_lr (1.0), betas ((0.9, 0.999)), eps (1e-8), memory ("fast"): as :class:`AdamSLS`.
    """ + _AMORTIZE_DOC + ARMIJO_DOC

    _momentum_aware = True
    _shared = ("max_trials", "smooth", "amortize", "memory")

    def __init__(self, params, lr: float = 0.1, *, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, max_grad_norm: Optional[float] = None, c: float = 0.6,
                 smooth: float = 0.0, backtrack: float = 0.9, growth_steps: float = 500,
                 reset: str = "growth", reset_every: int = 300, max_lr: float = 1.0,
                 min_lr: float = 1e-10, max_trials: int = 50, amortize: int = 0,
                 memory: str = "fast"):
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
            c=c, smooth=smooth, backtrack=backtrack, growth_steps=growth_steps, reset=reset,
            reset_every=reset_every, max_lr=max_lr, min_lr=min_lr, max_trials=max_trials,
            amortize=amortize, memory=memory))

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        self._validate_adam(group)

    @no_grad
    def _plan(self, segs: list[Segment], need_s: bool = True, line=None) -> Plan:
        moments, dens = self._moments(segs)
        if self._lean:
            return self._plan_lean(segs, moments, need_s, line)
        scratch = line.scratch if line is not None else None
        search = []
        for j, (sg, (d, mo, pos)) in enumerate(zip(segs, dens)):
            if d:
                n = len(sg.params)
                # d <- m_k / (bc1 * denom) in the denom buffer; m_k is provisional, built in the
                # line's scratch (or a temporary when no search follows), committed after the step
                assert n == len(mo.ms)  # ALSALS segments are whole param groups
                m_k = mo.m_new(scratch[j] if scratch is not None else None)
                torch._foreach_reciprocal_(d)
                torch._foreach_mul_(d, m_k)
                torch._foreach_div_(d, mo.bc1)
            search.append(d)
        s = (decrease_terms(line, [sg.grads for sg in segs], search, None,
                            flat_weights(segs, self.reducer)) if need_s else None)
        # exact_zero is asked only where the (global) s_j is 0, so every rank asks alike
        return Plan(search=search, s=s, moments=moments,
                    exact_zero=lambda j: not self.reducer.any_nonzero(search[j]))

    def _plan_lean(self, segs: list[Segment], moments: list, need_s: bool, line) -> Plan:
        """memory="lean": the direction ``m_k / (bc1 * denom)`` rebuilt at each use, elementwise
        as :meth:`_plan` computes it (so bitwise the same); whole in the line's buffer for the
        decrease terms and the zero test, which come before ``w0`` is saved."""
        search = []
        for sg, mo in zip(segs, moments):
            def fill(i, view, out, tmp, mo=mo):
                mo.denom_into(i, view, out)
                out.reciprocal_()
                out.mul_(mo.m_into(i, view, tmp))
                out.div_(mo.bc1[i])
            search.append(Rebuilt(fill, lambda i, mo=mo: (mo.vs[i], mo.grads[i], mo.ms[i]), two=True))
        s = None
        if need_s and line is not None:
            s = decrease_terms(line, [sg.grads for sg in segs],
                               [d.materialize(b) for d, b in zip(search, line.scratch)], None,
                               flat_weights(segs, self.reducer))
        return Plan(search=search, s=s, moments=moments,
                    exact_zero=lambda j: not self.reducer.any_nonzero(
                        search[j].materialize(line.scratch[j])))
