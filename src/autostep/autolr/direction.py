"""The search direction: the wrapped optimizer's real next update per unit learning rate.

The optimizer's state (``optimizer.state`` and the param-group values) is cloned, it steps once
with every group's rate set to its ratio to group 0 (via ``set_unit_rate``), ``d = theta_before -
theta_after`` is recorded, and parameters, state and group values are put back exactly (the clones
become the live state).  This is exact for any optimizer whose update is linear in the learning
rate (SGD with momentum, dampening, Nesterov and weight decay, Adam, AdamW, Adagrad, RMSprop, ...).
"""

from __future__ import annotations

from typing import Callable

import torch

from .._snapshot import clone_value

__all__ = ["update_direction"]


@torch.no_grad()
def update_direction(optimizer: torch.optim.Optimizer, params: list,
                     set_unit_rate: Callable[[], None]) -> list:
    """``d`` with ``optimizer.step()`` at unit rate moving ``params`` to ``params - d``.

    ``set_unit_rate()`` writes the unit rates into the param groups.  Parameters, optimizer state and
    every param-group value (the rates included) are exactly as before when this returns or raises.
    """
    saved_state = {p: {k: clone_value(v) for k, v in st.items()}
                   for p, st in optimizer.state.items()}
    saved_groups = [{k: clone_value(v) for k, v in g.items() if k != "params"}
                    for g in optimizer.param_groups]
    w0 = torch._foreach_mul(params, 1.0)   # an exact copy in one kernel
    try:
        set_unit_rate()
        optimizer.step()
        d = torch._foreach_sub(w0, params)
    finally:
        torch._foreach_copy_(params, w0)
        for p in list(optimizer.state.keys()):
            if p not in saved_state:
                del optimizer.state[p]
        for p, st in saved_state.items():
            cur = optimizer.state[p]
            cur.clear()
            cur.update(st)
        for g, sg in zip(optimizer.param_groups, saved_groups):
            for k, v in sg.items():
                if isinstance(g.get(k), torch.Tensor) and isinstance(v, torch.Tensor):
                    g[k].copy_(v)
                else:
                    g[k] = v
    return list(d)
