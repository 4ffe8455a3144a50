"""The random generators' state, captured once and replayed before each re-evaluation."""

from __future__ import annotations

import torch

__all__ = ["RNGSnapshot"]


class RNGSnapshot:
    """States of the CPU generator and, when CUDA is initialised, of every CUDA generator."""

    __slots__ = ("cpu", "cuda")

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
