"""Hyper-parameter validation with errors that name the bad value and say what to do."""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import torch


def _num(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def positive(name: str, value: Any) -> float:
    v = _num(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def nonnegative(name: str, value: Any) -> float:
    v = _num(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def open_unit(name: str, value: Any, hint: str = "") -> float:
    """0 < value < 1."""
    v = _num(name, value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}{hint}")
    return v


def half_open_unit(name: str, value: Any, hint: str = "") -> float:
    """0 <= value < 1."""
    v = _num(name, value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}{hint}")
    return v


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def betas(name: str, value: Any) -> tuple[float, float]:
    try:
        b1, b2 = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {value!r}") from None
    half_open_unit(f"{name}[0]", b1)
    half_open_unit(f"{name}[1]", b2)
    return float(b1), float(b2)


def choice(name: str, value: Any, options: Iterable[str]) -> str:
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def step_lr(index: int, value: Any, allow_zero: bool = False) -> float:
    """The ``lr`` of ``param_groups[index]`` as the step about to run (or a load) sees it.

    Unlike the construction-time checks this names where a bad value usually comes from: an LR
    scheduler, user code writing ``group["lr"]``, or a loaded state dict.
    """
    where = f"param_groups[{index}]['lr']"
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad:
        value = value.item()
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    v = float(value) if ok else math.nan
    if not ok or not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(
            f"{where} is {value!r}; it must be a finite number {bound}. It was set after construction "
            "(by an LR scheduler, by code writing group['lr'], or by load_state_dict); nothing was "
            "changed. Set it to a valid value (e.g. the initial lr) before the next step."
        )
    return v


def tensor_list_finite(ts) -> "torch.Tensor":
    """``sum_i max|t_i|`` as a 0-d float64 tensor: finite iff every element of every tensor is
    finite (NaN and inf propagate; float64 cannot overflow on float32/16 maxima).

    Exact but slow on CPU (the inf-norm runs element by element there, ~6 ns per element, as
    long as a backward of an MLP); :func:`finite_hint` is the fast first test."""
    if not ts:
        return torch.zeros((), dtype=torch.float64)
    from ..distributed import locals_  # DTensors: this rank's shards (callers rank-reduce it)

    return torch.stack(torch._foreach_norm(locals_(ts), math.inf, dtype=torch.float64)).sum()


def finite_hint(ts) -> "torch.Tensor":
    """A 0-d tensor that is finite only if every element of every tensor is finite.

    The sum of the tensors' 2-norms in their own dtype (one fused, vectorised pass, then two
    small ops): NaN and inf propagate, so a finite result proves every element finite.  A
    non-finite result may also come from an overflow of the squares of finite values (``|t|``
    above ~1e19 in float32); confirm it with the exact :func:`tensor_list_finite` (callers do so
    only then, which is rare)."""
    if not ts:
        return torch.zeros((), dtype=torch.float64)
    from ..distributed import locals_

    norms = torch._foreach_norm(locals_(ts))
    try:
        return torch.stack(norms).sum()
    except RuntimeError:  # norms on several devices
        return torch.stack([n.to(norms[0].device) for n in norms]).sum()
