"""Which gradients are whose: ``.grad`` fingerprints, telling a new gradient from a copy, the
gradients an optimizer's own backward produced (so that gradients computed outside ``step()`` are
recognised), and unscaling with a ``GradScaler``."""

from __future__ import annotations

import weakref
from typing import Sequence

import torch

from ..distributed import local

__all__ = ["grad_fingerprint", "replaced", "foreign_grads", "any_nonzero_grad", "note_own_grads",
           "releasable", "set_own_grads", "unscale_grads"]

#: attribute of the optimizer that records the ``.grad`` tensors its own last backward produced
OWN_GRADS = "_autostep_own_grads"


def grad_fingerprint(params: Sequence[torch.Tensor]) -> list:
    """The ``.grad`` objects themselves with their version counters (compared with ``is``)."""
    return [(p.grad, None if p.grad is None else p.grad._version) for p in params]


def replaced(now, before, version) -> bool:
    """True if ``.grad`` is not the tensor it was (``before``, at ``version``): a new gradient.

    A different *object* holding the same values is the same gradient: FSDP1 with
    ``use_orig_params=True`` replaces every ``.grad`` on each forward by a view of its flat
    gradient (a view of the same memory, or of a fresh copy when the flat gradient was rebuilt from
    the ``.grad`` fields), without changing it.  The same memory at the same version is checked
    first; otherwise the values are compared (one pass, only for replaced objects).  A closure's
    own ``backward()`` is recorded separately, so this only has to tell copies from new values."""
    if now is None or now is before:
        return False
    if before is None:
        return True
    a, b = local(now), local(before)
    if a.is_sparse or b.is_sparse or a.layout != torch.strided or b.layout != torch.strided:
        return True
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return True
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a._version == version:
        return False
    with torch.no_grad():
        return not torch.equal(a, b)


def foreign_grads(owner, params: Sequence[torch.Tensor]) -> bool:
    """Gradients in ``.grad`` that the optimizer's last step did not leave there (its own
    backward's, or a torch-style closure's in that step), or that changed since."""
    if not any(p.grad is not None for p in params):
        return False
    own = getattr(owner, OWN_GRADS, None) or {}
    for p in params:
        g = p.grad
        if g is None:
            continue
        ref = own.get(id(p))
        if ref is None or ref[0]() is not g or ref[1] != g._version:
            return True
    return False


def any_nonzero_grad(params: Sequence[torch.Tensor]) -> bool:
    return any(bool(p.grad.any()) for p in params if p.grad is not None)


def note_own_grads(owner, params: Sequence[torch.Tensor], ours: bool, left: bool = False,
                   existing: frozenset = frozenset()) -> None:
    """Record the ``.grad`` tensors a step leaves: those the owner's backward produced (``ours``,
    a loss-only closure) or a torch-style closure's (``left``).  While unchanged they are not
    "foreign" at the next step (so a loss-only closure after a torch-style step back-propagates
    instead of taking the previous batch's gradients as given), and the next step releases them
    before its forward (:func:`releasable`) -- except views (DDP's bucket views, a flat buffer of
    the user's) and tensors that existed before the step (``existing``: ids of the ``.grad``
    objects before it; a ``zero_grad(set_to_none=False)`` closure accumulating into persistent
    gradients, which the user may hold and reduce).  Neither ``ours`` nor ``left`` (gradients
    given from outside ``step()``): nothing is recorded."""
    if owner is None:
        return
    own = {}
    if ours or left:
        own = {id(p): (weakref.ref(p.grad), p.grad._version,
                       p.grad._base is None and id(p.grad) not in existing)
               for p in params if p.grad is not None}
    set_own_grads(owner, own)


def releasable(own, p: torch.Tensor) -> bool:
    """Whether ``p.grad`` is in the record ``own`` (of :func:`note_own_grads`) as a gradient the
    next step may release (call after :func:`foreign_grads` said nothing changed)."""
    entry = own.get(id(p))
    return entry is not None and entry[2]


def set_own_grads(owner, own) -> None:
    """Put back a record taken with ``getattr(owner, OWN_GRADS, None)``."""
    try:
        setattr(owner, OWN_GRADS, own)
    except AttributeError:  # pragma: no cover
        pass


def unscale_grads(grad_scaler, optimizer) -> bool:
    """``grad_scaler.unscale_(optimizer)`` and whether any gradient is inf/NaN.

    The check is recorded in the scaler, so the usual ``grad_scaler.update()`` after the step adapts
    the scale.  A disabled scaler (or ``None``) unscales nothing and reports no inf.
    """
    if grad_scaler is None or not grad_scaler.is_enabled():
        return False
    grad_scaler.unscale_(optimizer)
    state = grad_scaler._per_optimizer_states[id(optimizer)]
    return any(bool(v.item()) for v in state["found_inf_per_device"].values())
