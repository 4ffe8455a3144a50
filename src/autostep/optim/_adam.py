"""Adam moments and the inner products the Armijo family needs, with foreach ops."""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["adam_moments", "init_adam_state", "dots", "sq_norms", "all_zero"]


def init_adam_state(st: dict, p: torch.Tensor) -> None:
    """Create Adam's moments (zero) and step count (0) in the per-parameter state ``st``."""
    if "exp_avg" not in st:
        st["step"] = 0
        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


@torch.no_grad()
def adam_moments(state, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                 betas: tuple[float, float], eps: float):
    """Update Adam's moments in ``state`` with ``grads`` and return ``(m, v, denom, bc1)``.

    ``denom = sqrt(v / (1 - beta2^k)) + eps`` is a fresh list (the caller may overwrite it),
    ``bc1[i] = 1 - beta1^k_i``; ``m / (bc1 * denom)`` is exactly torch.optim.Adam's update direction.
    """
    b1, b2 = betas
    ms, vs, bc1, bc2s = [], [], [], []
    for p in params:
        st = state[p]
        init_adam_state(st, p)
        st["step"] += 1
        k = st["step"]
        ms.append(st["exp_avg"])
        vs.append(st["exp_avg_sq"])
        bc1.append(1.0 - b1 ** k)
        bc2s.append(math.sqrt(1.0 - b2 ** k))
    if not params:
        return ms, vs, [], bc1
    grads = list(grads)
    torch._foreach_lerp_(ms, grads, 1.0 - b1)
    torch._foreach_mul_(vs, b2)
    torch._foreach_addcmul_(vs, grads, grads, value=1.0 - b2)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, bc2s)
    torch._foreach_add_(denom, eps)
    return ms, vs, list(denom), bc1


def dots(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor],
         dens: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """``sum_i <x_i, y_i / den_i>`` as a 0-d float64 tensor (no full-size temporaries kept)."""
    if not xs:
        return torch.zeros((), dtype=torch.float64)
    if dens is None:
        parts = [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys)]
    else:
        parts = [torch.dot(x.reshape(-1), torch.div(y, d).reshape(-1)) for x, y, d in zip(xs, ys, dens)]
    return torch.stack([p.double() for p in parts]).sum()


def sq_norms(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i ||x_i||^2`` as a 0-d float64 tensor."""
    if not xs:
        return torch.zeros((), dtype=torch.float64)
    norms = torch._foreach_norm(list(xs))
    return torch.stack([n.double() for n in norms]).pow(2).sum()


def all_zero(xs: Sequence[torch.Tensor]) -> bool:
    return all(not bool(x.any()) for x in xs)
