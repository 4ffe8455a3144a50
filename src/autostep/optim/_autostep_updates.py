"""The schedule and the parameter updates of :class:`~autostep.optim.autostep.Autostep`.

* :func:`scheduled_rate` -- the rate after the ramp: linear or cosine decay from the peak to zero at
  ``total_steps``, or the constant peak without it;
* :func:`adam_update` -- Adam (decoupled weight decay), multi-tensor, for the ramp and the decay;
* :func:`sf_update`, :func:`sf_swap` -- Schedule-Free AdamW (Defazio et al. 2024) for runs without
  ``total_steps``: the parameters hold ``y = (1 - b1) z + b1 x``, gradients are taken at ``y``,
  ``z <- z - rate (g / denom + wd y)`` and ``x <- (1 - c) x + c z`` with
  ``c = rate^2 / sum(rate^2)``.  ``x`` is not stored: ``x = (y - (1 - b1) z) / b1``.

Each function takes one param group and the optimizer's ``state`` and changes only the parameters
and their per-parameter state.
"""

from __future__ import annotations

import math

import torch

__all__ = ["adam_update", "init_adam_state", "scheduled_rate", "sf_update", "sf_swap"]


def scheduled_rate(group: dict, k: int) -> float:
    """Rate (before the ``lr`` multiplier) for step ``k`` after the ramp, from the run-level numbers
    kept in ``group`` (``peak_lr``, ``total_steps``, ``ramp_end``, ``decay``)."""
    peak = group["peak_lr"]
    total = group["total_steps"]
    if total is None:
        return peak
    start = group["ramp_end"]
    span = max(1, total - start)
    u = min(1.0, max(0.0, (k - start) / span))
    if group["decay"] == "linear":
        return peak * (1.0 - u)
    return peak * 0.5 * (1.0 + math.cos(math.pi * u))


def init_adam_state(p: torch.Tensor, st: dict) -> None:
    """Zero Adam moments for ``p`` in its state dict ``st``."""
    st["step"] = 0
    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


@torch.no_grad()
def adam_update(group: dict, state, applied: float) -> None:
    """One Adam step at rate ``applied`` for every parameter of ``group`` that has a gradient."""
    b1, b2 = group["betas"]
    ps = [p for p in group["params"] if p.grad is not None]
    if not ps:
        return
    grads, ms, vs, steps = [], [], [], []
    for p in ps:
        st = state[p]
        if "exp_avg" not in st:
            init_adam_state(p, st)
        st["step"] += 1
        grads.append(p.grad)
        ms.append(st["exp_avg"])
        vs.append(st["exp_avg_sq"])
        steps.append(st["step"])
    torch._foreach_lerp_(ms, grads, 1.0 - b1)
    torch._foreach_mul_(vs, b2)
    torch._foreach_addcmul_(vs, grads, grads, value=1.0 - b2)
    if group["weight_decay"]:
        torch._foreach_mul_(ps, 1.0 - applied * group["weight_decay"])
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, [math.sqrt(1.0 - b2 ** s) for s in steps])
    torch._foreach_add_(denom, group["eps"])
    scale = [-applied / (1.0 - b1 ** s) for s in steps]
    upd = torch._foreach_div(ms, denom)
    torch._foreach_mul_(upd, scale)
    torch._foreach_add_(ps, upd)


@torch.no_grad()
def sf_update(group: dict, state, applied: float, weight: float) -> None:
    """One Schedule-Free AdamW step at rate ``applied``; ``weight`` is the sum of squared rates so far."""
    b1, b2 = group["betas"]
    for p in group["params"]:
        if p.grad is None:
            continue
        st = state[p]
        if "z" not in st:
            st["z"] = p.detach().clone()
        if "exp_avg_sq" not in st:
            st["step"] = 0
            st["exp_avg_sq"] = torch.zeros_like(p)
        st["step"] += 1
        s = st["step"]
        z, v, grad = st["z"], st["exp_avg_sq"], p.grad
        v.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
        denom = (v / (1.0 - b2 ** s)).sqrt_().add_(group["eps"])
        x = (p - (1.0 - b1) * z) / b1 if b1 > 0 else z.clone()
        new_weight = weight + applied ** 2
        c = applied ** 2 / new_weight if new_weight > 0 else 1.0
        if group["weight_decay"]:
            z.sub_(p, alpha=applied * group["weight_decay"])
        z.addcdiv_(grad, denom, value=-applied)
        x.lerp_(z, c)
        p.copy_(x.mul_(b1).add_(z, alpha=1.0 - b1))


@torch.no_grad()
def sf_swap(params, state, b1: float, to_eval: bool) -> None:
    """Move the parameters from ``y`` to the average ``x`` (``to_eval``) or back from ``x`` to ``y``."""
    if b1 <= 0:
        return
    for p in params:
        z = state[p].get("z")
        if z is None:
            continue
        if to_eval:
            p.sub_(z, alpha=1.0 - b1).div_(b1)
        else:
            p.mul_(b1).add_(z, alpha=1.0 - b1)
