"""Argument and value checks shared by every part of autostep, with one style of error.

Bad arguments raise ``ValueError`` (a value of the right kind out of range, or not a number where a
number is needed, as ``torch.optim`` does) or ``TypeError`` (an object of the wrong kind: not a
callable, not re-iterable, a loss that is not a scalar tensor); every message names the argument,
shows the bad value and says what is expected.  One check of each kind lives here:

* numbers: :func:`finite`, :func:`positive`, :func:`nonnegative`, :func:`greater_than`,
  :func:`open_unit`, :func:`half_open_unit`, :func:`positive_int`, :func:`betas`, :func:`choice`,
  :func:`increasing_pair`, and :func:`step_lr` for a rate read at step time;
* data and models: :func:`reiterable` (batches that every trial can iterate again),
  :func:`not_meta` (parameters that hold values);
* losses: :func:`check_loss` (what a ``loss_fn`` or closure returned is a scalar tensor);
* tensors: :func:`tensor_list_finite` (exact) and :func:`finite_hint` (fast);
* renamed keywords: :func:`renamed_keyword` (the old name still works, with a DeprecationWarning).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .distributed import locals_

__all__ = ["finite", "positive", "nonnegative", "greater_than", "open_unit", "half_open_unit",
           "positive_int", "betas", "choice", "increasing_pair", "step_lr", "reiterable", "not_meta",
           "check_loss", "tensor_list_finite", "finite_hint", "renamed_keyword"]


def finite(name: str, value: Any, hint: str = "") -> float:
    """A finite real number (not a bool), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}{hint}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}{hint}")
    return value


def positive(name: str, value: Any, hint: str = "") -> float:
    """A finite number > 0."""
    v = finite(name, value, hint)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}{hint}")
    return v


def nonnegative(name: str, value: Any, hint: str = "") -> float:
    """A finite number >= 0."""
    v = finite(name, value, hint)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}{hint}")
    return v


def greater_than(name: str, value: Any, low: float, hint: str = "") -> float:
    """A finite number > ``low``."""
    v = finite(name, value, hint)
    if not v > low:
        raise ValueError(f"{name} must be > {low}, got {value!r}{hint}")
    return v


def open_unit(name: str, value: Any, hint: str = "") -> float:
    """0 < value < 1."""
    v = finite(name, value, hint)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}{hint}")
    return v


def half_open_unit(name: str, value: Any, hint: str = "") -> float:
    """0 <= value < 1."""
    v = finite(name, value, hint)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}{hint}")
    return v


def positive_int(name: str, value: Any, minimum: int = 1, hint: str = "") -> int:
    """An ``int`` (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    return value


def betas(name: str, value: Any) -> tuple[float, float]:
    """A pair of numbers in [0, 1)."""
    try:
        b1, b2 = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {value!r}") from None
    half_open_unit(f"{name}[0]", b1)
    half_open_unit(f"{name}[1]", b2)
    return float(b1), float(b2)


def choice(name: str, value: Any, options: Iterable[str]) -> str:
    """One of ``options``."""
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def increasing_pair(name: str, value: Any, hint: str = "") -> tuple[float, float]:
    """A pair ``(low, high)`` of positive finite numbers with ``low < high`` (e.g. an lr range)."""
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}{hint}") from None
    lo = positive(f"{name}[0]", lo, hint)
    hi = positive(f"{name}[1]", hi, hint)
    if not hi > lo:
        raise ValueError(f"{name} must be increasing (low < high), got {value!r}{hint}")
    return lo, hi


def reiterable(name: str, data: Any) -> None:
    """``data`` yields batches and can be iterated again (a list, a tuple, a DataLoader)."""
    if data is None:
        raise TypeError(f"{name} is None; pass a re-iterable of batches (a list or a DataLoader)")
    # never call iter() here: creating a DataLoader iterator draws from the global generator
    if not isinstance(data, Iterable):
        raise TypeError(f"{name} must be a re-iterable of batches (a list or a DataLoader), got "
                        f"{type(data).__name__}")
    if isinstance(data, Iterator):
        raise TypeError(f"{name} is a one-shot iterator ({type(data).__name__}); every pass must "
                        "see the same batches, so pass something that can be iterated again, e.g. "
                        f"list({name}) or a DataLoader")


def not_meta(params, who: str) -> None:
    """Refuse parameters on the ``meta`` device (they hold no values, so nothing can be trained)."""
    for p in params:
        if getattr(p, "is_meta", False):
            raise ValueError(f"{who} got a parameter on the 'meta' device (shape {tuple(p.shape)}), "
                             "which holds no values; materialise the model first, e.g. "
                             "model.to_empty(device='cpu') and initialise or load its weights")


def check_loss(value: Any, where: str, *, source: str = "loss_fn(model, batch)",
               error: type = TypeError, contract: str = "") -> torch.Tensor:
    """``value`` (what ``source`` returned ``where``) must be a scalar tensor; returns it.

    Raises ``error`` (a ``TypeError`` unless the caller has a more specific class, e.g. the
    optimizers' :class:`~autostep.ClosureError`) naming what came back and how to fix it;
    ``contract`` is appended to the message (the closure contract, say).
    """
    tail = f"\n{contract}" if contract else ""
    if not isinstance(value, torch.Tensor):
        hint = ""
        if isinstance(value, (int, float)):
            hint = " It looks like it returned loss.item(); return the tensor itself."
        elif value is None:
            hint = " It returned None; add `return loss` at the end."
        raise error(f"{source} returned {type(value).__name__} {value!r} {where}; it must return "
                    f"the loss as a scalar torch.Tensor.{hint}{tail}")
    if value.numel() != 1:
        raise error(f"{source} returned a tensor of shape {tuple(value.shape)} {where}; it must "
                    "return a scalar loss. Reduce it first, e.g. `return loss.mean()`, or use a "
                    f"loss with reduction='mean'.{tail}")
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
    # DTensors: this rank's shards (callers rank-reduce it)
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
    norms = torch._foreach_norm(locals_(ts))
    try:
        return torch.stack(norms).sum()
    except RuntimeError:  # norms on several devices
        return torch.stack([n.to(norms[0].device) for n in norms]).sum()


def renamed_keyword(where: str, old: str, old_value: Any, new: str, new_value: Any,
                    default: Any) -> Any:
    """The value of a keyword argument renamed from ``old`` to ``new``.

    ``old_value`` is what the caller passed under the old name (``None``: not passed); it wins,
    with a ``DeprecationWarning``.  Passing both names (``new_value`` not its ``default``) is a
    ``TypeError``.
    """
    if old_value is None:
        return new_value
    if new_value != default:
        raise TypeError(f"{where}() got both {old}= and {new}=; pass only {new}= "
                        f"({old}= is its old name)")
    warnings.warn(f"{where}(): the keyword {old}= is now called {new}=; the old name will be "
                  "removed", DeprecationWarning, stacklevel=3)
    return old_value
