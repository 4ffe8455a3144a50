"""The layout of AutoLR's state dict: torch's two keys, so that torch's checkpoint helpers
(``get_optimizer_state_dict`` / ``set_optimizer_state_dict``), accelerate and the Hugging Face
Trainer keep all of it.

* ``state``: the wrapped optimizer's per-parameter state (same parameter indices).
* ``param_groups[g]``: AutoLR's own group values (the scheduler-visible ``lr``, a scheduler's
  ``initial_lr``, ...), the wrapped group's values under ``"wrapped"``, the parameter indices under
  ``"params"``; group 0 also holds AutoLR's own state (schedule, rates, log) under ``"autolr"``.

Two older layouts load too: AutoLR's previous one (a wrapped optimizer's state dict plus a
top-level ``"autolr"`` key) and a plain optimizer state dict.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch

__all__ = ["pack_state", "split_state", "is_init_call", "init_state"]

_OWN_KEYS = ("params", "wrapped", "autolr")


def pack_state(inner: dict, own_groups: list, own_state: dict) -> dict:
    """AutoLR's state dict from the wrapped optimizer's, AutoLR's groups and its own state."""
    groups = []
    for ig, og in zip(inner["param_groups"], own_groups):
        g = {k: copy.deepcopy(v) for k, v in og.items() if k != "params"}
        g["wrapped"] = {k: copy.deepcopy(v) for k, v in ig.items() if k != "params"}
        g["params"] = ig["params"]
        groups.append(g)
    groups[0]["autolr"] = own_state
    return {"state": inner["state"], "param_groups": groups}


def split_state(state_dict: dict, n_groups: int) -> tuple[dict, Optional[list], Optional[dict]]:
    """``(wrapped optimizer's state dict, AutoLR's group values or None, own state or None)``.

    Group values are None for the older layouts; own state is None for a plain optimizer dict.
    Raises ``ValueError`` (before anything is loaded) when the dict does not fit.
    """
    if not isinstance(state_dict, dict) or "param_groups" not in state_dict:
        raise ValueError(f"expected an optimizer state dict with 'state' and 'param_groups', got "
                         f"{type(state_dict).__name__}")
    groups = state_dict["param_groups"]
    if len(groups) != n_groups:
        raise ValueError(f"the state dict has {len(groups)} param groups, this AutoLR has "
                         f"{n_groups}; load a state dict of the same setup")
    if groups and "wrapped" in groups[0]:
        own = groups[0].get("autolr")
        if own is None:
            raise ValueError("param group 0 of the state dict has no 'autolr' entry; it was not "
                             "made by AutoLR.state_dict()")
        inner = {"state": state_dict.get("state", {}),
                 "param_groups": [{**g["wrapped"], "params": g["params"]} for g in groups]}
        values = [{k: v for k, v in g.items() if k not in _OWN_KEYS} for g in groups]
        return inner, values, own
    inner = {k: v for k, v in state_dict.items() if k != "autolr"}
    return inner, None, state_dict.get("autolr")


def is_init_call(own_groups: list, params: Callable[[], list]) -> bool:
    """Whether a ``step()`` without closure is torch's ``_init_optim_state``: the distributed
    checkpoint helpers set every group's ``lr`` to 0 and every gradient to zeros, then step to make
    a fresh optimizer's state.  ``params()`` lists the optimized parameters."""
    if any(float(g["lr"]) != 0.0 for g in own_groups):
        return False
    params = [p for p in params() if p.requires_grad]
    return bool(params) and all(p.grad is not None and not p.grad.any() for p in params)


def init_state(optimizer: torch.optim.Optimizer) -> None:
    """Give the wrapped optimizer a zero-rate step (its state appears, parameters stay); AutoLR
    counts nothing and evaluates nothing."""
    groups = optimizer.param_groups
    saved = [g["lr"] for g in groups]
    try:
        for g in groups:
            g["lr"] = torch.zeros_like(g["lr"]) if isinstance(g["lr"], torch.Tensor) else 0.0
        optimizer.step()
    finally:
        for g, lr in zip(groups, saved):
            g["lr"] = lr
