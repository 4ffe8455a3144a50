"""SLS (Armijo line search along -g) and AdamSLS (Armijo with the Adam direction)."""

from __future__ import annotations

from typing import Optional

import torch

from . import _validate as V
from ._adam import AdamMoments, init_adam_state, sq_norms
from ._armijo import ArmijoOptimizer, Plan, Segment, decrease_terms

__all__ = ["SLS", "AdamSLS"]


def _stack(ts: list) -> torch.Tensor | None:
    """One 1-d tensor of 0-d tensors (on the first one's device), or ``None`` for no tensors."""
    if not ts:
        return None
    return torch.stack([t.to(ts[0].device) for t in ts])


def _sq_norm_terms(segs: list[Segment], reducer) -> torch.Tensor | None:
    """``||g||^2`` per segment (the SGD direction's decrease term), left on the device; local sums
    weighted for sharded parameters (``Reducer.weights``: the rank average is the global sum)."""
    return _stack([sq_norms(sg.grads, reducer.weights(sg.params)) for sg in segs])


def _flat_weights(segs: list[Segment], reducer) -> list | None:
    """``Reducer.weights`` of every segment's parameters, in one flat list (``None``: all 1)."""
    return reducer.weights([p for sg in segs for p in sg.params])


_COMMON_DOC = """
    Closure contract
        ``step(closure)``: the closure computes and returns the mini-batch loss as a scalar tensor; it
        must not call ``backward()`` or ``zero_grad()``.  The optimizer calls it once with grad
        enabled, clears the old gradients and back-propagates, then once per trial point under
        ``torch.no_grad()``, replaying the same random numbers (dropout masks) and restoring module
        buffers (BatchNorm statistics) after each trial.  ``step`` returns the start-point loss.

    Safe failure
        At most ``max_trials`` trial forwards per step; a non-finite trial loss is a rejection.  When
        every trial fails the parameters are restored and the step is **skipped** (counted in
        ``skipped_steps``), and the step size stays at the smallest size tested (never below
        ``min_lr``).  A NaN/inf start loss or gradient (mixed precision produces them) skips the
        step before anything changes: parameters, moments, step counters, EMAs and step sizes stay
        as they were; it counts in ``skipped_steps`` and ``nonfinite_steps`` and warns.  A step
        that raises (an exception or ``KeyboardInterrupt`` in the closure, a broken closure
        contract) leaves the optimizer, ``.grad``, module buffers and the random generators exactly
        as before the call, so retrying it continues bit-for-bit.  A NaN/inf/non-positive ``lr``
        written between steps is refused at the next step.  A zero search direction costs no trial
        forward.

    Step size and schedulers
        ``param_groups[i]["lr"]`` holds the step size applied by the last step.  A value written
        there from outside between steps (a torch LR scheduler, or you) is a **cap**: it holds until
        the next write, and each search starts from ``min(its own grown step size, cap)`` -- it is
        never restarted from the cap.  A step accepted at the cap leaves the search's own step size
        (``param_groups[i]["step_size"]``) as it was; a backtrack below the cap lowers it.  So a
        closed-form schedule (``LambdaLR``, the Hugging Face linear/cosine schedules, warm-up
        included) is an upper envelope that the step follows once it falls below the searched size,
        at about one trial per step, and chainable schedulers (``ExponentialLR``, ``StepLR``) shrink
        the applied step from one write to the next.  Amortised steps reuse ``min(step size, cap)``.

    Gradients computed outside ``step()``
        With a torch-style closure the gradients it leaves are used (gradient accumulation,
        clipping in the closure).  Gradients already in ``.grad`` that this optimizer's own last
        backward did not produce (a backward of yours, accelerate's ``accumulate()``) are used as
        they are with a loss-only closure too, which then only measures the loss.  Loops that call
        ``optimizer.step()`` without an argument (the Hugging Face Trainer, accelerate) bind a
        loss-only closure with :meth:`set_closure`.

    Mixed precision
        bf16 autocast needs nothing.  fp16 with a ``torch.amp.GradScaler``:
        ``opt.step(closure, grad_scaler=scaler); scaler.update()`` -- the closure returns the
        *unscaled* loss (the search compares unscaled losses), the optimizer scales its backward,
        unscales the gradients, and skips a step with an inf/NaN gradient before any state
        changes.  When ``backward()`` runs outside ``step()`` (bound closure), the stock
        ``scaler.step(opt); scaler.update()`` works.

    Param groups
        Every group has its own step size and Armijo constant; one joint search scales all groups'
        step sizes (each by its own ``backtrack``) until
        ``f(w) - f(w - sum_j eta_j d_j) >= sum_j c_j eta_j s_j``.  With one group this is exactly
        the paper's condition.  ``max_trials`` is shared by all groups.  Parameters whose ``grad``
        is ``None`` are left out of the step.
"""


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
    """ + _COMMON_DOC

    def __init__(self, params, lr: float = 1.0, c: float = 0.1, backtrack: float = 0.9,
                 growth_steps: float = 500, reset: str = "growth", reset_every: int = 300,
                 max_lr: float = 10.0, min_lr: float = 1e-10, max_trials: int = 50,
                 weight_decay: float = 0.0, max_grad_norm: Optional[float] = None):
        defaults = dict(lr=lr, c=c, backtrack=backtrack, growth_steps=growth_steps, reset=reset,
                        reset_every=reset_every, max_lr=max_lr, min_lr=min_lr, max_trials=max_trials)
        defaults.update(weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    def _plan(self, segs: list[Segment], need_s: bool = True, line=None) -> Plan:
        return Plan(search=[sg.grads for sg in segs],
                    s=_sq_norm_terms(segs, self.reducer) if need_s else None)


class _AdamDirection:
    """Mixin: Adam moments, the beta1 = 0 search direction and the momentum final update."""

    _state_keys = ("step", "exp_avg", "exp_avg_sq")

    def _validate_adam(self, group: dict) -> None:
        V.betas("betas", group["betas"])
        V.positive("eps", group["eps"])

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
            d = mo.denom()
            pos = 0
            for j in idx:
                n = len(segs[j].params)
                dens[j] = (d[pos:pos + n], mo, pos)
                pos += n
            moments.append(mo)
        return moments, dens

    def _plan_precond(self, segs: list[Segment], need_s: bool = True, line=None) -> Plan:
        """Search along g / denom (Adam with beta1 = 0), update along m_hat / denom."""
        moments, dens = self._moments(segs)
        search, final, bc1s = [], [], []
        for sg, (den, mo, pos) in zip(segs, dens):
            n = len(sg.params)
            search.append((sg.grads, den))
            final.append((mo.ms[pos:pos + n], den))
            bc1s.append(mo.bc1[pos:pos + n])
        s = None
        if need_s:
            s = decrease_terms(line, [sg.grads for sg in segs], [sg.grads for sg in segs],
                               [d for d, _, _ in dens], _flat_weights(segs, self.reducer))
        return Plan(search=search, s=s, final=final, moments=moments,
                    final_scale=lambda j, eta: [eta / b for b in bc1s[j]])


class AdamSLS(_AdamDirection, ArmijoOptimizer):
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
    """ + _COMMON_DOC

    def __init__(self, params, lr: float = 0.1, c: float = 0.1, backtrack: float = 0.9,
                 growth_steps: float = 500, reset: str = "growth", reset_every: int = 300,
                 max_lr: float = 1.0, min_lr: float = 1e-10, max_trials: int = 50,
                 betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, max_grad_norm: Optional[float] = None):
        defaults = dict(lr=lr, c=c, backtrack=backtrack, growth_steps=growth_steps, reset=reset,
                        reset_every=reset_every, max_lr=max_lr, min_lr=min_lr,
                        max_trials=max_trials, betas=betas, eps=eps)
        defaults.update(weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict) -> None:
        super()._validate_group(group)
        self._validate_adam(group)

    def _plan(self, segs: list[Segment], need_s: bool = True, line=None) -> Plan:
        return self._plan_precond(segs, need_s, line)
