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

from .._snapshot import OptimizerState

__all__ = ["update_direction"]


@torch.no_grad()
def update_direction(optimizer: torch.optim.Optimizer, params: list,
                     set_unit_rate: Callable[[], None]) -> list:
    """``d`` with ``optimizer.step()`` at unit rate moving ``params`` to ``params - d``.

    ``set_unit_rate()`` writes the unit rates into the param groups.  Parameters, optimizer state and
    every param-group value (the rates included) are exactly as before when this returns or raises.
    """
    saved = OptimizerState(optimizer)
    w0 = torch._foreach_mul(params, 1.0)   # an exact copy in one kernel
    try:
        set_unit_rate()
        optimizer.step()
        d = torch._foreach_sub(w0, params)
    finally:
        torch._foreach_copy_(params, w0)
        saved.restore()
    return list(d)
