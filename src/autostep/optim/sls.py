"""SLS (Armijo line search along -g) and AdamSLS (Armijo with the Adam direction)."""

from __future__ import annotations

from typing import Optional


from ._adam_direction import AdamArmijo
from ._armijo import ArmijoOptimizer, Plan, Segment
from ._armijo_plan import sq_norm_terms
from ._docs import ARMIJO_DOC

__all__ = ["SLS", "AdamSLS"]


class SLS(ArmijoOptimizer):
    __doc__ = """Stochastic Armijo line search along the negative gradient (SLS).

    Vaswani et al. (2019) as summarised by the ALSALS paper, eq. 1-2: each step starts from
    ``eta_{k-1} * 2**(1/b)`` and backtracks (``eta *= backtrack``) until

        f(w - eta g) <= f(w) - c * eta * ||g||^2 .

    Parameters (defaults from the paper)
        lr (1.0): initial step size (Vaswani et al.'s ``init_step_size``).
        c (0.1): Armijo constant.
        backtrack (0.9): factor of a rejected step size.
        growth_steps (500): ``b`` of eq. 2; the step size may double every ``b`` steps.  It is a
            constant, not coupled to an epoch length (the published code couples it to
            ``n_batches_per_epoch``, which the user must know).
        reset ("growth"): start-of-step rule: ``"growth"`` (eq. 2), ``"double"`` (the slides'
            rule: double every ``reset_every`` steps, otherwise keep), or ``"none"``.
        reset_every (300): period of the ``"double"`` rule (the slides' value).
        max_lr (10.0): cap on the step size (deviation: the paper has none; it stops runaway
            growth on flat regions).
        min_lr (1e-10): floor on the step size after backtracking.
        max_trials (50): trial forwards per step at most.
    """ + ARMIJO_DOC

    def __init__(self, params, lr: float = 1.0, *, weight_decay: float = 0.0,
                 max_grad_norm: Optional[float] = None, c: float = 0.1, backtrack: float = 0.9,
                 growth_steps: float = 500, reset: str = "growth", reset_every: int = 300,
                 max_lr: float = 10.0, min_lr: float = 1e-10, max_trials: int = 50):
        super().__init__(params, dict(
            lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm, c=c, backtrack=backtrack,
            growth_steps=growth_steps, reset=reset, reset_every=reset_every, max_lr=max_lr,
            min_lr=min_lr, max_trials=max_trials))

    def _plan(self, segs: list[Segment], need_s: bool = True, line=None) -> Plan:
        return Plan(search=[sg.grads for sg in segs],
                    s=sq_norm_terms(segs, self.reducer) if need_s else None)


class AdamSLS(AdamArmijo):
    __doc__ = """Armijo line search with the Adam direction (Adam + SLS).

    ALSALS paper eq. 3-5 (after Vaswani et al. 2021): Adam's moments ``m, v`` are updated with the
    gradient; the search uses the Adam direction **with beta1 = 0**, ``d = g / (sqrt(v_hat) + eps)``,
    and the preconditioned gradient norm, backtracking until

        f(w - eta d) <= f(w) - c * eta * sum(g^2 / (sqrt(v_hat) + eps)) ;

    the update then applies the accepted ``eta`` **with momentum**:
    ``w <- w - eta * m_hat / (sqrt(v_hat) + eps)``, as the paper states.

    Consequence (documented, as the issue asks): the point that was tested is not the point that is
    applied.  The Armijo condition guarantees a decrease along ``-g/denom``, not along the momentum
    direction, so a step can still increase the mini-batch loss when momentum and gradient disagree
    -- the failure mode the ALSALS paper diagnoses for large models (step sizes collapse to 1e-5 to
    1e-6).  Use :class:`ALSALS` to search along the direction that is applied.

    ``v_hat``/``m_hat`` use the current gradient (``m_k``, ``v_k``); eq. 3 of the paper prints
    ``m_{k-1}``, ``v_{k-1}``, a typo (with it the first step would divide by zero).

    Parameters
        lr (0.1): initial step size (deviation: the paper gives none; the published code uses 0.1).
        c (0.1), backtrack (0.9), growth_steps (500), reset, reset_every, min_lr, max_trials: as
            :class:`SLS`.
        max_lr (1.0): cap; an Adam-direction step of 1 moves every weight by about 1.
        betas ((0.9, 0.999)), eps (1e-8): Adam's.
        memory ("fast"): ``"lean"`` rebuilds the Adam denominator ``sqrt(v_hat) + eps`` chunk by
            chunk at each use instead of keeping it for the step: peak optimizer memory Adam's
            state + one parameter copy (``w0``) + a 128 KiB chunk, instead of + two copies, for
            about 1.3x the CPU time per step; the parameters are bitwise those of ``"fast"``.
    """ + ARMIJO_DOC
