"""``@no_grad``: :func:`torch.no_grad` for the functions on the optimizers' hot path.

``@torch.no_grad()`` builds and enters a new context object on every call (about 3 us on CPU);
the line searches call a dozen such helpers per step, each already inside ``step()``'s own
``no_grad``.  This decorator checks the grad mode (one C call) and enters ``no_grad`` only when it
is on, so helpers stay safe to call from anywhere at no cost inside a step (issue 13).
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

__all__ = ["no_grad"]

F = TypeVar("F", bound=Callable)


def no_grad(fn: F) -> F:
    """Run ``fn`` with gradient recording off: directly when it is off already, else inside
    :class:`torch.no_grad` (the same semantics as ``@torch.no_grad()`` for ordinary functions)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not torch.is_grad_enabled():
            return fn(*args, **kwargs)
        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
