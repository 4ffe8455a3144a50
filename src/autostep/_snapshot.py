"""Snapshots of a model that put it back bit for bit.

:class:`ModelState` holds a model's parameters and buffers (and, when asked, its gradients and
train/eval flags) and writes them back in place, so references held elsewhere -- the user's
optimizer, say -- stay valid.  The LR search resets every trial with it, the range test puts the
model back with it, and the loss-along-lines diagnostic returns to ``w_t`` with it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ModelState"]


class ModelState:
    """Parameters, buffers, gradients and train/eval flags of a model, restorable bit for bit.

    Values are written back in place into the original tensor objects (and an object replaced
    since the snapshot is put back), so references held elsewhere -- e.g. by the user's optimizer
    -- stay valid.  Buffers are copied back unconditionally: BatchNorm updates its statistics
    without bumping the version counter.
    """

    def __init__(self, model: nn.Module) -> None:
        self.entries = []
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is not None:
                        self.entries.append((store, name, t, t.detach().clone()))
        self.grads = [(p, p.grad) for p in model.parameters()]
        self.modes = [(m, m.training) for m in model.modules()]

    @torch.no_grad()
    def restore(self, grads: bool = False) -> None:
        """Write the saved values back (and the modes; the gradient objects too when ``grads``)."""
        for store, name, t, saved in self.entries:
            if store.get(name) is not t:
                store[name] = t
            t.copy_(saved)
        for m, training in self.modes:
            m.training = training
        if grads:
            for p, g in self.grads:
                p.grad = g
